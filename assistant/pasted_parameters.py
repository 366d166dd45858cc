"""A prompt pasted with its AUTOMATIC1111 parameters runs as written, with those parameters.

People coming from A1111, InvokeAI or civitai copy a whole "infotext" block:

    a cozy cabin at night, snow
    Negative prompt: blurry, lowres
    Steps: 30, Sampler: Euler a, CFG scale: 5, Seed: 42, Size: 768x512, Model: sd15

Planning it like chat would rewrite the prompt and drop the numbers. The block already says
exactly what to make, so it becomes a generation plan of its own, for either planner: the
prompt verbatim, the negative prompt, steps, guidance, sampler, seed and size (a backend with
no sampler choice says so). What Atelier cannot apply from a block (the model, and keys it
does not know) is named in the reply.
"""

from __future__ import annotations

import re

from assistant.plan import Intent, Plan
from storage.pngmeta import parse_infotext

#: keys Atelier applies; the rest of a block is reported as not applied
_APPLIED = {"Steps", "CFG scale", "Seed", "Size", "Sampler"}
#: keys that describe the image's file or history, not how to make it: not worth a note
_QUIET = {"Model hash", "Version", "Atelier", "Parent", "Operation", "Backend"}
_SIZE = re.compile(r"\s*(\d{1,5})\s*[x×]\s*(\d{1,5})\s*")


def plan_from_pasted_parameters(text: str) -> Plan | None:
    """A GENERATE plan for a pasted infotext block; None for anything else."""
    if "\n" not in text.strip():
        return None  # a block has a prompt line and a parameters line at least
    info = parse_infotext(text)
    if not info.params or not info.prompt:
        return None
    params = info.params
    notes: list[str] = []
    steps = _whole(params.get("Steps"), "Steps", notes)
    seed = _whole(params.get("Seed"), "Seed", notes)
    guidance = _number(params.get("CFG scale"), "CFG scale", notes)
    size: tuple[int, int] | None = None
    if "Size" in params:
        match = _SIZE.fullmatch(str(params["Size"]))
        if match:
            size = (int(match.group(1)), int(match.group(2)))
        else:
            notes.append(f"Size {params['Size']!r} is not WIDTHxHEIGHT; the default size was used.")
    ignored = [key for key in params if key not in _APPLIED and key not in _QUIET]
    if ignored:
        listed = ", ".join(f"{key} ({params[key]})" for key in ignored)
        notes.append(
            f"Not applied from the pasted parameters: {listed} "
            "(Atelier has no control for them, so the backend used its own)."
        )
    return Plan(
        intent=Intent.GENERATE,
        instruction=text,
        prompt=info.prompt,
        negative_prompt=info.negative_prompt,
        steps=steps,
        guidance=guidance,
        sampler=str(params["Sampler"]).strip() or None if "Sampler" in params else None,
        seed=seed,
        size=size,
        verbatim=True,
        reply=" ".join(["Made from your pasted prompt and parameters, as written.", *notes]),
    )


def _whole(value: str | None, key: str, notes: list[str]) -> int | None:
    if value is None:
        return None
    try:
        return int(str(value).strip())
    except ValueError:
        notes.append(f"{key} {value!r} is not a whole number; the default was used.")
        return None


def _number(value: str | None, key: str, notes: list[str]) -> float | None:
    if value is None:
        return None
    try:
        number = float(str(value).strip())
    except ValueError:
        number = float("nan")
    if number != number or number in (float("inf"), float("-inf")):
        notes.append(f"{key} {value!r} is not a number; the default was used.")
        return None
    return number
