"""PNG metadata other tools can read.

A `parameters` text chunk in AUTOMATIC1111's "infotext" layout (what A1111, ComfyUI loaders,
InvokeAI importers and civitai read) plus an `atelier` JSON chunk with lineage. The layout:

    <prompt, possibly several lines>
    Negative prompt: <negative prompt>
    Steps: 25, Sampler: Euler a, CFG scale: 7.0, Seed: 42, Size: 512x512, Model: sd15

Values that contain a comma or colon are written as JSON strings, as A1111 does.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from PIL import Image as PILImage
from PIL import PngImagePlugin

PARAMETERS_KEY = "parameters"
ATELIER_KEY = "atelier"
NEGATIVE_PREFIX = "Negative prompt:"
_PARAM_PAIR = re.compile(r'\s*([\w][\w \-/+]*):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


@dataclass
class Infotext:
    prompt: str
    negative_prompt: str = ""
    params: dict[str, str] = field(default_factory=dict)


def _format_value(value: Any) -> str:
    text = str(value)
    if any(ch in text for ch in ',:"\n'):
        return json.dumps(text)
    return text


def format_infotext(prompt: str, negative_prompt: str, params: Mapping[str, Any]) -> str:
    lines = [prompt.strip()]
    if negative_prompt.strip():
        lines.append(f"{NEGATIVE_PREFIX} {negative_prompt.strip()}")
    pairs = [f"{key}: {_format_value(value)}" for key, value in params.items() if value is not None]
    lines.append(", ".join(pairs))
    return "\n".join(lines)


def _parse_params_line(line: str) -> dict[str, str] | None:
    """Parse `Key: value, Key: value`; None when the line is not a parameters line."""
    params: dict[str, str] = {}
    position = 0
    while position < len(line):
        match = _PARAM_PAIR.match(line, position)
        if not match or match.end() == position:
            return None
        key, raw = match.group(1).strip(), match.group(2).strip()
        params[key] = json.loads(raw) if raw.startswith('"') else raw
        position = match.end()
    return params if "Steps" in params or "Seed" in params or "Size" in params else None


def parse_infotext(text: str) -> Infotext:
    lines = text.strip().split("\n")
    params: dict[str, str] = {}
    if lines:
        parsed = _parse_params_line(lines[-1])
        if parsed is not None:
            params = parsed
            lines = lines[:-1]
    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    target = prompt_lines
    for line in lines:
        if line.startswith(NEGATIVE_PREFIX):
            target = negative_lines
            line = line[len(NEGATIVE_PREFIX) :].lstrip()
        target.append(line)
    return Infotext("\n".join(prompt_lines).strip(), "\n".join(negative_lines).strip(), params)


def encode_png(image: PILImage.Image, infotext: str | None, lineage: Mapping[str, Any] | None) -> bytes:
    """PNG bytes with both chunks; deterministic for the same pixels and metadata."""
    info = PngImagePlugin.PngInfo()
    if infotext is not None:
        info.add_itxt(PARAMETERS_KEY, infotext)
    if lineage is not None:
        info.add_itxt(ATELIER_KEY, json.dumps(dict(lineage), sort_keys=True))
    buffer = io.BytesIO()
    if image.mode not in ("RGB", "RGBA", "L"):
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


@dataclass
class PngMetadata:
    infotext: Infotext | None
    lineage: dict[str, Any] | None


def read_png_metadata(data: bytes) -> PngMetadata:
    with PILImage.open(io.BytesIO(data)) as image:
        chunks = dict(getattr(image, "text", {}) or {})
    raw_parameters = chunks.get(PARAMETERS_KEY)
    raw_lineage = chunks.get(ATELIER_KEY)
    lineage: dict[str, Any] | None = None
    if raw_lineage:
        try:
            loaded = json.loads(raw_lineage)
            lineage = loaded if isinstance(loaded, dict) else None
        except json.JSONDecodeError:
            lineage = None
    return PngMetadata(parse_infotext(raw_parameters) if raw_parameters else None, lineage)
