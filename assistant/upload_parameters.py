"""What an uploaded file says made it: the PNG text chunks other tools and Atelier write.

A1111, InvokeAI and ComfyUI exports and Atelier's own files carry a `parameters` chunk (the
A1111 "infotext"); Atelier's also an `atelier` chunk with the image's ids. "What prompt made
this?" about an upload answers from them, and an edit of it keeps their Steps and CFG scale.
"""

from __future__ import annotations

import math
from typing import Any

from storage.pngmeta import read_png_metadata

#: caps on what an uploaded file may put in the record: it is the file's claim, not ours
_EMBEDDED_PROMPT_CHARS = 4000
_EMBEDDED_KEYS = 40
_EMBEDDED_VALUE_CHARS = 300

#: the A1111 names of the settings an edit of an upload inherits
EMBEDDED_NAMES = {"steps": "Steps", "guidance": "CFG scale"}


def number_or_none(value: Any) -> float | None:
    """A positive finite number from a file's text ("30", "5.5"), else None."""
    try:
        number = float(str(value).strip())
    except ValueError:
        return None
    return number if math.isfinite(number) and number > 0 else None


def embedded_parameters(data: bytes) -> tuple[str, str, dict[str, Any]]:
    """Prompt, negative prompt, and the A1111 parameters (Steps, Sampler, CFG scale, Seed,
    Model…) plus, for a file Atelier made, where it came from.

    Anything unreadable is simply absent: the upload itself never fails over its metadata.
    """
    if not data.startswith(b"\x89PNG"):
        return "", "", {}
    try:
        metadata = read_png_metadata(data)
    except Exception:  # a damaged chunk is the file's problem; the pixels already loaded
        return "", "", {}
    embedded: dict[str, Any] = {}
    prompt = negative = ""
    if metadata.infotext is not None:
        prompt = metadata.infotext.prompt[:_EMBEDDED_PROMPT_CHARS]
        negative = metadata.infotext.negative_prompt[:_EMBEDDED_PROMPT_CHARS]
        for key, value in list(metadata.infotext.params.items())[:_EMBEDDED_KEYS]:
            embedded[str(key)[:60]] = str(value)[:_EMBEDDED_VALUE_CHARS]
    lineage = metadata.lineage or {}
    if lineage.get("id") is not None:
        made = {k: lineage.get(k) for k in ("id", "conversation_id", "number", "operation")}
        embedded["Atelier"] = {k: v for k, v in made.items() if isinstance(v, int | str)}
    return prompt, negative, embedded
