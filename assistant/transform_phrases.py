"""Transforms and upscale: the model-free operations as people name them in a message.

"make it black and white", "rotate left", "crop to 16:9", "upscale 4x": each pattern finds an
operation and its arguments, and names the extra words it owns, so the planner can tell a
message that is only a transform ("blur it") from an edit ("blur the background").
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from assistant.phrase_parsing import vocab
from assistant.plan import ImageInfo
from assistant.rewrite import COLORS

_I = re.IGNORECASE

_GRAYSCALE = r"\b(?:black\s*(?:and|&|n)\s*white|b\s*&\s*w|b/w|gr[ae]y\s*-?scale|monochrome|noir)\b"
_SEPIA = r"\bsepia(?:[\s-]?ton(?:e|ed))?\b"
_BLUR = r"\b(?:blur(?:red|ry)?|gaussian\s+blur)\b"
_SHARPEN = r"\b(?:sharpen|sharper|crisper|crispen)\b"
_ROTATE = (
    r"\b(?:rotate|rotation|(?:turn|spin)(?=\s+(?:it\s+|this\s+|that\s+|#\s?\d+\s+)?(?:\d+|left|right|"
    r"upside|sideways|clockwise|counter|anti|ninety|by)))\b"
)
_FLIP = r"\b(?:flip|mirror)(?:ped)?\b"
#: a crop is asked for by name ("crop to square", "square crop"). "make it square" is no crop: like
#: "make it 16:9" or "make it portrait" it is a shape, which `render_settings` reads and the
#: planner redraws with the image's own prompt and seed, so nothing of the picture is cut away.
_CROP = r"\b(?:crop|square\s+crop|cut\s+(?:off|out)\s+the\s+(?:left|right|top|bottom))\b"
#: "make it 1024x768" is a resize, not an edit that writes "1024x768" into the prompt. The
#: planner matches it with the references cut out ("make [#2] 768x512"), so the object is optional.
RESIZE = (
    r"\b(?:resize|rescale|scale)\b|\b(?:make|set|change|turn)\s+(?:(?:it|this|that)(?:\s+one)?\s+)?(?:to\s+|into\s+)?"
    r"\d{2,5}\s*(?:x|×|by)\s*\d{2,5}\b|\b(?:change|set)\s+(?:the\s+)?(?:size|dimensions)\b"
    r"|\bhalf\s+(?:the|its)\s+size\b|\b(?:shrink|downscale|downsize)\b|\bscale\s+(?:it\s+)?down\b"
)
_BRIGHTNESS = r"\b(?:brightness|brighten|darken|exposure)\b"
_CONTRAST = r"\bcontrast\b"
_SATURATION = r"\b(?:saturation|saturated?|desaturate|vibran(?:t|ce)|vivid)\b"
_BORDER = r"\b(?:border|frame\s+it)\b"
#: display sizes people name instead of pixels; the width each means
DISPLAY_SIZE = r"(?:[248]k|uhd|ultra\s+hd|full\s+hd|hd|1080p)\b"
DISPLAY_WIDTHS: dict[str, int] = {"2k": 2048, "4k": 3840, "8k": 7680, "uhd": 3840, "ultra hd": 3840}


def display_width(text: str) -> tuple[str, int] | None:
    """ "4k" → ("4K", 3840); "full hd" → ("Full HD", 1920): the size named and its width."""
    m = re.search(r"\b" + DISPLAY_SIZE, text, flags=re.IGNORECASE)
    if m is None:
        return None
    key = re.sub(r"\s+", " ", m.group(0).lower())
    width = DISPLAY_WIDTHS.get(key, 1920)
    label = {"full hd": "Full HD", "ultra hd": "Ultra HD", "hd": "HD"}.get(key, key.upper())
    return label, width


UPSCALE = (
    r"\b(?:up-?scale|upsample|enlarge|super[\s-]?resolution|hi-?res|high(?:er)?[\s-]res(?:olution)?|"
    r"increase\s+(?:the\s+)?resolution|(?:make|get)\s+(?:it\s+|this\s+|that\s+)?(?:bigger|larger)|blow\s+(?:it\s+)?up|"
    r"double\s+the\s+size|(?:2|4)\s*(?:x|×)\s+(?:bigger|larger)|but\s+(?:bigger|larger)|^(?:bigger|larger)"
    r"(?=\s*(?:please)?\s*[.!]*$))\b"
    # "make it 4k", "in 4K please": a display size, which only an upscale gives a finished image
    r"|\b(?:make|render|get|export|save)\s+(?:(?:it|this|that|#\s?\d+)\s+(?:in\s+|at\s+|to\s+)?|(?:in|at|to)\s+)"
    + DISPLAY_SIZE
    + r"|^(?:(?:in|at)\s+)?"
    + DISPLAY_SIZE
    + r"(?=\s*(?:please)?\s*[.!]*$)"
)

_DIRECTIONS = vocab(
    "left right clockwise counterclockwise anticlockwise counter anti degrees degree horizontally vertically "
    "horizontal vertical upside sideways ninety top bottom side"
)
_ADJUST = vocab(
    "increase decrease reduce lower higher raise boost up down darken brighten heavily strongly lightly "
    "gently"
)


def _factor(text: str, up: float = 1.3, down: float = 0.7) -> float:
    m = re.search(r"(\d+)\s*%", text)
    decrease = re.search(
        r"\b(?:decrease|reduce|lower|less|darken|down|desaturate|tone\s+down|drop)\b", text, flags=_I
    )
    if m:
        p = int(m.group(1)) / 100
        return round(1 - p if decrease else 1 + p, 3)
    m = re.search(r"\b(?:to|factor|of|by)\s*(\d+(?:\.\d+)?)\b", text, flags=_I)
    if m and "." in m.group(1):
        return float(m.group(1))
    # "increase the brightness by 50": a whole number that large is a percentage, as on a slider
    by = re.search(r"\bby\s+(\d{2,3})\b", text, flags=_I)
    if by:
        p = int(by.group(1)) / 100
        return round(max(0.0, 1 - p) if decrease else 1 + p, 3)
    return down if decrease else up


def _rotation(text: str) -> int:
    m = re.search(r"\b(\d{1,3})\s*(?:°|deg(?:rees?)?)?", text)
    degrees = int(m.group(1)) if m else 90
    if re.search(r"\bninety\b", text, flags=_I):
        degrees = 90
    if re.search(r"\bupside\s+down\b|\b180\b", text, flags=_I):
        return 180
    if re.search(r"\b(?:left|counter[\s-]?clockwise|anti[\s-]?clockwise)\b", text, flags=_I):
        return degrees
    # "right", "clockwise", or no direction at all: like an image viewer's rotate button
    return -degrees


_RATIOS = {
    "square": "1:1",
    "widescreen": "16:9",
    "cinematic": "21:9",
    "portrait": "2:3",
    "vertical": "2:3",
    "landscape": "3:2",
    "horizontal": "3:2",
}


def named_transform(text: str, target: ImageInfo | None) -> tuple[str, dict[str, Any], str, list[str]] | None:
    """(name, args, matched pattern, extra arg words) for the first transform named, else None.

    A returned name of "" means the transform needs an argument the user did not give (a crop
    without a shape, a resize without a size); the caller asks for it.
    """
    candidates: list[tuple[int, str, dict[str, Any], str, list[str]]] = []

    def found(pattern: str) -> re.Match[str] | None:
        return re.search(pattern, text, flags=_I)

    if m := found(_GRAYSCALE):
        candidates.append((m.start(), "grayscale", {}, _GRAYSCALE, ["black", "white", "gray", "grey"]))
    if m := found(_SEPIA):
        candidates.append((m.start(), "sepia", {}, _SEPIA, ["tone", "toned"]))
    if m := found(_BLUR):
        radius = _amount(
            text,
            digits=2,
            strong=r"a\s+lot|heav(?:y|ily)|strong(?:ly)?|very|more|much",
            weak=r"slight(?:ly)?|a\s+(?:bit|little)|light(?:ly)?|soft(?:ly)?",
            values=(6, 1, 2),
        )
        candidates.append((m.start(), "blur", {"radius": radius}, _BLUR, [*_ADJUST, "soft", "softly"]))
    if m := found(_SHARPEN):
        candidates.append((m.start(), "sharpen", {}, _SHARPEN, []))
    if m := found(_ROTATE):
        candidates.append((m.start(), "rotate", {"degrees": _rotation(text)}, _ROTATE, [*_DIRECTIONS, "by"]))
    if m := found(_FLIP):
        vertical = re.search(r"\b(?:vertical(?:ly)?|upside\s+down|top\s+to\s+bottom)\b", text, flags=_I)
        direction = "vertical" if vertical else "horizontal"
        candidates.append(
            (m.start(), "flip", {"direction": direction}, _FLIP, [*_DIRECTIONS, "around", "over"])
        )
    if m := found(_CROP):
        ratio = re.search(r"\b(\d{1,2})\s*[:x×/]\s*(\d{1,2})\b", text)
        box = re.search(r"\b(\d{1,5})\s*,\s*(\d{1,5})\s*,\s*(\d{1,5})\s*,\s*(\d{1,5})\b", text)
        named = re.search(r"\b(" + "|".join(_RATIOS) + r")\b", text, flags=_I)
        args: dict[str, Any] = {}
        side = crop_side(text, target)
        if box:
            args = {"box": tuple(int(box.group(i)) for i in range(1, 5))}
        elif side:
            args = {"box": side[0]}
        elif ratio:
            args = {"aspect": f"{int(ratio.group(1))}:{int(ratio.group(2))}"}
        elif named:
            args = {"aspect": _RATIOS[named.group(1).lower()]}
        name = "crop" if args else ""
        candidates.append(
            (
                m.start(),
                name,
                args,
                _CROP,
                [
                    *_RATIOS,
                    *_SIDES,
                    *_PARTS,
                    "box",
                    "aspect",
                    "ratio",
                    "center",
                    "centre",
                    "middle",
                    "off",
                    "out",
                    "keep",
                    "only",
                ],
            )
        )
    if m := found(RESIZE):
        dims = re.search(r"\b(\d{2,5})\s*(?:x|×|by|\*)\s*(\d{2,5})\b", text)
        half = re.search(r"\b(?:half|50\s*%)\b", text, flags=_I)
        if dims:
            args = {"width": int(dims.group(1)), "height": int(dims.group(2))}
        elif half and target is not None:
            args = {"width": max(1, target.width // 2), "height": max(1, target.height // 2)}
        else:
            args = {}
        candidates.append(
            (
                m.start(),
                "resize" if args else "",
                args,
                RESIZE,
                ["half", "down", "width", "height", "shrink", "downscale", "downsize", "its"],
            )
        )
    if m := found(_BRIGHTNESS):
        candidates.append((m.start(), "brightness", {"factor": _factor(text)}, _BRIGHTNESS, [*_ADJUST]))
    if m := found(_CONTRAST):
        candidates.append((m.start(), "contrast", {"factor": _factor(text)}, _CONTRAST, [*_ADJUST]))
    if m := found(_SATURATION):
        desaturate = re.search(r"\bdesaturate\b", text, flags=_I)
        factor = 0.5 if desaturate else _factor(text)
        extra = [*_ADJUST, "colors", "colours", "colorful", "colourful"]
        candidates.append((m.start(), "saturation", {"factor": factor}, _SATURATION, extra))
    if m := found(_BORDER):
        width = _amount(
            text, digits=3, strong=r"thick|wide|big|heavy", weak=r"thin|narrow|small|fine", values=(32, 8, 16)
        )
        color_m = re.search(r"\b(" + "|".join(COLORS) + r")\b", text, flags=_I)
        color = color_m.group(1).lower() if color_m else "white"
        extra = [*COLORS, "thick", "wide", "big", "heavy", "thin", "narrow", "small", "fine", "around", "add"]
        candidates.append((m.start(), "border", {"width": width, "color": color}, _BORDER, extra))
    if not candidates:
        return None
    _, name, args, pattern, extra = min(candidates, key=lambda c: c[0])
    return name, args, pattern, extra


def unchanged_by(info: ImageInfo, name: str, args: Mapping[str, Any]) -> bool:
    """True when a crop to a ratio or a resize to a size would give the image back as it is."""
    if name == "resize":
        return (args.get("width"), args.get("height")) == (info.width, info.height)
    if name == "crop" and isinstance(aspect := args.get("aspect"), str) and ":" in aspect:
        try:  # "2.35:1" from a model is a ratio too; "wide:ish" is the transform's to refuse
            across, down = (float(part) for part in aspect.split(":", 1))
        except ValueError:
            return False
        return across * info.height == down * info.width
    return False


def upscale_factor(text: str) -> tuple[int, str | None]:
    """The factor asked for, 2 or 4 (what the upscaler does), and a note when another was asked for.

    The number is read whole ("1.5x" is one and a half, not 5×, and "1.2x" not 2×), then the
    nearer factor the upscaler has is used, larger from 3× on. "#1" is an image, never a factor.
    """
    if re.search(r"\bquadruple\b|\bfour\s*(?:x|×|times)", text, flags=_I):
        return 4, None
    if re.search(r"\bdouble\b|\btwo\s*(?:x|×|times)", text, flags=_I):
        return 2, None
    m = re.search(
        r"(?<![\d.#])(\d+(?:\.\d+)?)\s*(?:x|×|times)(?![a-z\d])|(?<![a-z])(?:x|×)\s*(\d+(?:\.\d+)?)(?![\d.])",
        text,
        flags=_I,
    )
    if m is None:
        return 2, None
    wanted = float(m.group(1) or m.group(2))
    if wanted in (2, 4):
        return int(wanted), None
    factor = 4 if wanted >= 3 else 2
    return factor, f"I can upscale 2× or 4×, so I used {factor}× instead of {wanted:g}×."


_SIDES = {
    "left": "left",
    "right": "right",
    "top": "top",
    "bottom": "bottom",
    "upper": "top",
    "lower": "bottom",
}
_PARTS = {"half": 2, "third": 3, "quarter": 4}
_CROP_SIDE = r"\b(?P<side>left|right|top|bottom|upper|lower)(?:\s+(?P<part>half|third|quarter))?\b"


def crop_side(text: str, target: ImageInfo | None) -> tuple[tuple[int, int, int, int], str | None] | None:
    """A crop box for "crop to the left half" (keep it) or "crop the top" (cut a quarter off it).

    The crop transform takes pixels, so the box comes from the target's size.
    """
    m = re.search(_CROP_SIDE, text, flags=_I)
    if m is None or target is None:
        return None
    side = _SIDES[m.group("side").lower()]
    w, h = target.width, target.height
    keep = m.group("part") is not None or re.search(r"\b(?:to|keep|only)\b", text[: m.start()], flags=_I)
    if keep:
        k = _PARTS[(m.group("part") or "half").lower()]
        boxes = {"left": (0, 0, w // k, h), "right": (w - w // k, 0, w, h)}
        boxes |= {"top": (0, 0, w, h // k), "bottom": (0, h - h // k, w, h)}
        return boxes[side], None
    cut = {"left": (w // 4, 0, w, h), "right": (0, 0, w - w // 4, h)}
    cut |= {"top": (0, h // 4, w, h), "bottom": (0, 0, w, h - h // 4)}
    note = f"I cut the {side} quarter off; “crop to the {side} half” keeps that half instead."
    return cut[side], note


def _amount(text: str, *, digits: int, strong: str, weak: str, values: tuple[int, int, int]) -> int:
    """A size in pixels from the message: a number ("3 px"), else a strong or a weak word.

    `values` are (strong, weak, neither).
    """
    number = re.search(rf"\b(\d{{1,{digits}}})\s*(?:px|pixels?)?\b", text)
    if number:
        return int(number.group(1))
    if re.search(rf"\b(?:{strong})\b", text, flags=_I):
        return values[0]
    if re.search(rf"\b(?:{weak})\b", text, flags=_I):
        return values[1]
    return values[2]
