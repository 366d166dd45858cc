"""Text shortened to one display line, the same way in replies, the CLI and the UI."""

from __future__ import annotations


def one_line(text: str | None, width: int = 60) -> str:
    """`text` with its whitespace collapsed, cut to `width` characters with an ellipsis.

    Prompts and titles arrive with newlines and runs of spaces (pasted parameter blocks);
    a table cell, a caption or a quoted request must stay one line.
    """
    words = " ".join((text or "").split())
    return words if len(words) <= width else words[: width - 1].rstrip() + "…"
