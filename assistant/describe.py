"""Answers to questions about the conversation, read from the lineage record only.

"What prompt made #3?" and "how did #5 come about?" are answered from stored rows, never
from the chat transcript or a model's memory, so the answer is true even after a restart.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from math import gcd
from pathlib import Path

from assistant.one_line import one_line
from storage.models import Image
from storage.repository import Repository


def _quote(text: str | None, width: int = 160) -> str:
    return f"“{one_line(text, width)}”"


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _step(image: Image, numbers: dict[int, int], seeds: dict[int, int | None]) -> str:
    if image.operation == "upload":
        return f"#{image.number} was uploaded"
    source_id = (image.params or {}).get("regenerated_from") or -1
    rerolled = numbers.get(source_id)
    # "replay #2" and "#2 with 40 steps" keep the seed: that is a re-run, not a re-roll
    kept = seeds.get(source_id) == image.seed
    how = (
        f"a re-run of #{rerolled} with the same seed" if kept else f"a re-roll of #{rerolled} with a new seed"
    )
    again = f" ({how})" if rerolled is not None else ""
    replayed = numbers.get((image.params or {}).get("replay_of") or -1)
    if replayed is not None:  # `atelier replay --from-root`: the same step again, on a new branch
        again = f" (a replay of #{replayed})"
    if image.operation == "generate":
        return f"#{image.number} was generated from {_quote(image.instruction or image.prompt, 80)}{again}"
    parent = numbers.get(image.parent_id or -1)
    source = f" of #{parent}" if parent is not None else ""
    words = f" ({_quote(image.instruction, 80)})" if image.instruction else ""
    return f"#{image.number} is {_article(image.operation)} {image.operation}{source}{words}{again}"


def describe_prompt(image: Image, asked: dict[str, object] | None = None) -> str:
    """`asked` is the call's record: what the user asked for, which a backend that ignores a
    setting (the offline renderer has no CFG) does not report for its image."""
    if image.operation == "upload":
        return _describe_upload(image)
    lines = [
        f"#{image.number} ({image.operation}, {image.backend}/{image.model}, seed {image.seed}, "
        f"{image.width}×{image.height})"
    ]
    if image.instruction:
        lines.append(f"You wrote: {_quote(image.instruction)}")
    if image.prompt:
        lines.append(f"Prompt used: {_quote(image.prompt, 600)}")
    if image.negative_prompt:
        lines.append(f"Negative prompt: {_quote(image.negative_prompt, 300)}")
    if image.revised_prompt:
        lines.append(f"The provider says it rendered: {_quote(image.revised_prompt, 600)}")
    params = image.params or {}
    # the style answers "what style is #1?"; steps and guidance are what A1111 users compare
    keys = ("style", "steps", "guidance", "strength", "sampler", "transform")
    shown = {k: params[k] for k in keys if params.get(k) is not None}
    if shown:
        lines.append("Parameters: " + ", ".join(f"{k} {v}" for k, v in shown.items()))
    unused = {
        k: (asked or {})[k]
        for k in ("steps", "guidance")
        if k not in shown and (asked or {}).get(k) is not None
    }
    if unused:
        lines.append(
            "Asked for but not used by the "
            f"{image.backend} backend: " + ", ".join(f"{k} {v}" for k, v in unused.items())
        )
    return "\n\n".join(lines)


#: the settings a question can be about ("what was the negative prompt for #1?", "where is the
#: file for #2?"), in the order an answer lists them
QUESTION_FIELDS: tuple[tuple[str, str], ...] = (
    ("prompt", r"(?<!negative\s)\bprompts?\b"),
    ("negative", r"\bnegative(?:\s+prompts?)?\b|\bnegatives\b"),
    ("seed", r"\bseeds?\b"),
    (
        "size",
        r"\b(?:size|dimensions?|resolution|aspect(?:\s+ratio)?|ratio|orientation|width|height|"
        r"how\s+(?:big|large|wide|tall)|bigger|biggest|larger|largest|smaller|smallest|wider|widest|taller|tallest)\b",
    ),
    ("steps", r"\bsteps?\b"),
    ("guidance", r"\b(?:guidance|cfg)\b"),
    ("sampler", r"\b(?:sampler|scheduler)s?\b"),
    ("strength", r"\b(?:strength|denoising)\b"),
    ("model", r"\b(?:model|backend|checkpoint)s?\b"),
    ("file", r"\b(?:file|path|folder|saved|stored|located|disk)\b"),
    ("made", r"\bhow\s+long\b|\bwhen\b|\btook\b|\bdate\b|\bwhat\s+time\b"),
)


def asked_fields(question: str) -> tuple[str, ...]:
    """The settings a question names, so "what was the negative prompt for #1?" is answered
    with that (or "none"), not the whole card; "how did you make #1?" names none."""
    return tuple(name for name, pattern in QUESTION_FIELDS if re.search(pattern, question, re.IGNORECASE))


def _aspect(width: int, height: int) -> str:
    divisor = gcd(width, height) or 1
    ratio = f"{width // divisor}:{height // divisor}"
    shape = "square" if width == height else "landscape" if width > height else "portrait"
    return f"{width}×{height} pixels ({ratio}, {shape})"


def _field_line(
    image: Image, name: str, asked: dict[str, object], path: Path | None, took_ms: int | None = None
) -> str:
    params = image.params or {}
    backend = f"the {image.backend} backend"
    if name == "made":
        when = f"Made: {image.created_at:%Y-%m-%d %H:%M} UTC"
        if took_ms is None:
            what = f"{_article(image.operation)} {image.operation}"
            return f"{when}; as {what} it ran no backend call, so it has no time of its own"
        return f"{when}, in {took_ms / 1000:.1f} s (the whole call, with every image it made)"
    if name == "prompt":
        return f"Prompt used: {_quote(image.prompt, 600)}" if image.prompt else "It has no prompt."
    if name == "negative":
        if image.negative_prompt:
            return f"Negative prompt: {_quote(image.negative_prompt, 300)}"
        return "Negative prompt: none."
    if name == "seed":
        if image.seed is not None:
            return f"Seed: {image.seed}"
        return f"Seed: none ({_article(image.operation)} {image.operation} has no seed of its own)."
    if name == "size":
        return f"Size: {_aspect(image.width, image.height)}"
    if name == "model":
        return f"Model: {image.model} ({backend})"
    if name == "file":
        where = str(path) if path is not None else "the image store"
        return f"File: {where} (a PNG with its parameters and lineage in its metadata)"
    value = params.get(name)
    label = {"guidance": "Guidance (CFG)"}.get(name, name.capitalize())
    if value is not None:
        return f"{label}: {value}"
    if asked.get(name) is not None:
        return f"{label}: {asked[name]} was asked for, but {backend} does not use it."
    what = f"{_article(image.operation)} {image.operation}"
    return f"{label}: none recorded; {backend} does not use one for {what}."


def describe_fields(
    image: Image,
    fields: Collection[str],
    asked: dict[str, object] | None = None,
    path: Path | None = None,
    took_ms: int | None = None,
) -> str:
    """The settings a question asked about, each answered even when the answer is "none".

    `took_ms` is how long the backend call that made the image ran, from its generation row.
    """
    header = f"#{image.number} ({image.operation}, {image.backend}/{image.model})"
    order = [name for name, _ in QUESTION_FIELDS if name in fields]
    lines = (_field_line(image, name, asked or {}, path, took_ms) for name in order)
    return "\n\n".join([header, *lines])


def _describe_upload(image: Image) -> str:
    """An upload was not made here: what its file says made it, or that it says nothing."""
    lines = [f"#{image.number} is an upload ({image.width}×{image.height})."]
    embedded = dict((image.params or {}).get("embedded") or {})
    made_here = embedded.pop("Atelier", None)
    if not image.prompt and not embedded:
        lines.append("Its file carries no generation parameters, so there is no prompt or seed to show.")
        return "\n\n".join(lines)
    if isinstance(made_here, dict) and made_here.get("number") is not None:
        lines.append(
            f"Its file says Atelier made it (#{made_here['number']} of conversation "
            f"{made_here.get('conversation_id')}, {made_here.get('operation')})."
        )
    if image.prompt:
        lines.append(f"Prompt in the file: {_quote(image.prompt, 600)}")
    if image.negative_prompt:
        lines.append(f"Negative prompt in the file: {_quote(image.negative_prompt, 300)}")
    if embedded:
        lines.append("Parameters in the file: " + ", ".join(f"{k} {v}" for k, v in embedded.items()))
    return "\n\n".join(lines)


def describe_lineage(repo: Repository, image: Image) -> str:
    chain = [*repo.ancestors(image.id), image]
    rows = repo.conversation_images(image.conversation_id)
    numbers = {row.id: row.number for row in rows}
    seeds = {row.id: row.seed for row in rows}
    steps = " → ".join(_step(row, numbers, seeds) for row in chain)
    children = [row for row in repo.descendants(image.id) if row.parent_id == image.id]
    text = f"How #{image.number} came about: {steps}."
    if children:
        text += " Made from it since: " + ", ".join(f"#{c.number} ({c.operation})" for c in children) + "."
    return text


def describe_list(images: list[Image]) -> str:
    if not images:
        return "There are no images in this conversation yet."
    lines = []
    for image in images:
        parent = ""
        if image.parent_id is not None:
            parent_number = next((i.number for i in images if i.id == image.parent_id), None)
            parent = f" from #{parent_number}" if parent_number is not None else ""
        lines.append(
            f"- #{image.number} {image.operation}{parent}, {image.width}×{image.height}: "
            f"{_quote(image.instruction or image.prompt, 70)}"
        )
    count = f"{len(images)} image{'s' if len(images) != 1 else ''}"
    return f"Images in this conversation ({count}):\n" + "\n".join(lines)
