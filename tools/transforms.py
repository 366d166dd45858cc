"""Deterministic, model-free image transforms: the things a user asks for without a new prompt.

Each transform is a plain function `(image, **args) -> image` registered in `TRANSFORMS` under
the name the planner uses. Arguments often arrive from an LLM tool call as JSON, so numbers may be
strings ("1.5") and boxes may be lists; each function checks and converts its own arguments and
raises `InvalidRequest` with a message that says what would have worked. Transforms work on RGB
and RGBA images; colour transforms leave the alpha channel alone.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from PIL import Image, ImageColor, ImageEnhance, ImageFilter, ImageOps

from tools.base import InvalidRequest

Transform = Callable[..., Image.Image]

#: Output limits: a transform must not turn a small upload into gigabytes of memory.
MAX_SIDE = 8192
MAX_PIXELS = 40_000_000
MAX_FACTOR = 10.0
MAX_BLUR_RADIUS = 100.0
MAX_BORDER = 1024


# --------------------------------------------------------------------------------------------
# Argument checks


def _number(transform: str, name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise InvalidRequest(f"{transform}: '{name}' must be a number, not {value!r}.")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidRequest(f"{transform}: '{name}' must be a number, not {value!r}.") from None
    if not math.isfinite(number):
        raise InvalidRequest(f"{transform}: '{name}' must be a finite number, not {value!r}.")
    return number


def _integer(transform: str, name: str, value: Any) -> int:
    number = _number(transform, name, value)
    if number != int(number):
        raise InvalidRequest(f"{transform}: '{name}' must be a whole number, not {value!r}.")
    return int(number)


def _factor(transform: str, value: Any) -> float:
    factor = _number(transform, "factor", value)
    if not 0 <= factor <= MAX_FACTOR:
        raise InvalidRequest(
            f"{transform.capitalize()} factor must be between 0 and {MAX_FACTOR:g} "
            f"(1 = unchanged), not {factor:g}."
        )
    return factor


def _check_output_size(transform: str, width: int, height: int) -> None:
    if width < 1 or height < 1:
        raise InvalidRequest(f"{transform}: the result would be {width}x{height}, which has no pixels.")
    if width > MAX_SIDE or height > MAX_SIDE or width * height > MAX_PIXELS:
        raise InvalidRequest(
            f"{transform}: the result would be {width}x{height}; the limit is {MAX_SIDE} px per side "
            f"and {MAX_PIXELS // 1_000_000} megapixels."
        )


def _on_colour_channels(image: Image.Image, change: Callable[[Image.Image], Image.Image]) -> Image.Image:
    """Apply a colour change to RGB only: enhancers and filters would otherwise also fade the alpha."""
    if image.mode != "RGBA":
        return change(image)
    result = change(image.convert("RGB")).convert("RGBA")
    result.putalpha(image.getchannel("A"))
    return result


# --------------------------------------------------------------------------------------------
# Colour and tone


def brightness(image: Image.Image, factor: float) -> Image.Image:
    """factor 1 = unchanged, 0.5 = half as bright, 1.5 = 50% brighter."""
    value = _factor("brightness", factor)
    return _on_colour_channels(image, lambda im: ImageEnhance.Brightness(im).enhance(value))


def contrast(image: Image.Image, factor: float) -> Image.Image:
    value = _factor("contrast", factor)
    return _on_colour_channels(image, lambda im: ImageEnhance.Contrast(im).enhance(value))


def saturation(image: Image.Image, factor: float) -> Image.Image:
    """factor 0 = grey, 1 = unchanged, 2 = twice as colourful."""
    value = _factor("saturation", factor)
    return _on_colour_channels(image, lambda im: ImageEnhance.Color(im).enhance(value))


def grayscale(image: Image.Image) -> Image.Image:
    """Grey but still RGB(A), so later steps and files keep one colour model."""
    return _on_colour_channels(image, lambda im: im.convert("L").convert("RGB"))


_SEPIA = np.array([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]], dtype=np.float32)


def sepia(image: Image.Image) -> Image.Image:
    def tone(im: Image.Image) -> Image.Image:
        pixels = np.asarray(im, dtype=np.float32) @ _SEPIA.T
        return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))

    return _on_colour_channels(image, tone)


def blur(image: Image.Image, radius: float = 2) -> Image.Image:
    value = _number("blur", "radius", radius)
    if not 0 < value <= MAX_BLUR_RADIUS:
        raise InvalidRequest(
            f"Blur radius must be above 0 and at most {MAX_BLUR_RADIUS:g} px, not {value:g}."
        )
    return _on_colour_channels(image, lambda im: im.filter(ImageFilter.GaussianBlur(value)))


def sharpen(image: Image.Image) -> Image.Image:
    """An unsharp mask: crisper edges without the halo noise of a plain sharpen kernel."""
    return _on_colour_channels(
        image, lambda im: im.filter(ImageFilter.UnsharpMask(radius=2, percent=150, threshold=2))
    )


# --------------------------------------------------------------------------------------------
# Geometry

_EXACT_ROTATIONS = {
    90: Image.Transpose.ROTATE_90,
    180: Image.Transpose.ROTATE_180,
    270: Image.Transpose.ROTATE_270,
}


def rotate(image: Image.Image, degrees: float) -> Image.Image:
    """Positive = counter-clockwise (as in PIL), so "rotate left" is 90; the canvas grows to fit.

    Quarter turns are exact pixel moves (no resampling, no blur); other angles fill the new
    corners with transparency for RGBA and black for RGB.
    """
    angle = _number("rotate", "degrees", degrees) % 360
    if angle == 0:
        return image.copy()
    if angle in _EXACT_ROTATIONS:
        return image.transpose(_EXACT_ROTATIONS[int(angle)])
    radians = math.radians(angle)
    width = math.ceil(abs(image.width * math.cos(radians)) + abs(image.height * math.sin(radians)))
    height = math.ceil(abs(image.width * math.sin(radians)) + abs(image.height * math.cos(radians)))
    _check_output_size("rotate", width, height)
    return image.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)


def flip(image: Image.Image, direction: str) -> Image.Image:
    """ "horizontal" mirrors left-right; "vertical" turns upside down."""
    chosen = str(direction).strip().lower()
    if chosen == "horizontal":
        return ImageOps.mirror(image)
    if chosen == "vertical":
        return ImageOps.flip(image)
    raise InvalidRequest(f"Flip direction must be 'horizontal' or 'vertical', not {direction!r}.")


def _parse_aspect(aspect: Any) -> tuple[float, float]:
    text = str(aspect).strip()
    parts = text.replace("/", ":").replace("x", ":").split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        across, down = float(parts[0]), float(parts[1])
    except ValueError:
        raise InvalidRequest(f"Crop aspect must look like '1:1' or '16:9', not {aspect!r}.") from None
    if not (across > 0 and down > 0 and math.isfinite(across) and math.isfinite(down)):
        raise InvalidRequest(f"Crop aspect needs two positive numbers, like '4:3', not {aspect!r}.")
    return across, down


def _box_values(box: Any) -> tuple[int, int, int, int]:
    if isinstance(box, str | bytes) or not isinstance(box, tuple | list) or len(box) != 4:
        raise InvalidRequest(f"Crop box must be four numbers (left, top, right, bottom), not {box!r}.")
    left, top, right, bottom = (_integer("crop", "box", value) for value in box)
    return left, top, right, bottom


def _parse_box(image: Image.Image, box: Any) -> tuple[int, int, int, int]:
    left, top, right, bottom = _box_values(box)
    if not (0 <= left < right <= image.width and 0 <= top < bottom <= image.height):
        raise InvalidRequest(
            f"Crop box ({left}, {top}, {right}, {bottom}) is not inside the {image.width}x{image.height} "
            "image; it needs 0 ≤ left < right ≤ width and 0 ≤ top < bottom ≤ height."
        )
    return left, top, right, bottom


def crop(
    image: Image.Image, aspect: str | None = None, box: tuple[int, int, int, int] | None = None
) -> Image.Image:
    """Either the largest centred crop with `aspect` ("16:9"), or exactly `box` in pixels."""
    if (aspect is None) == (box is None):
        raise InvalidRequest(
            "Crop needs either an aspect like '1:1' or a box (left, top, right, bottom), not both."
        )
    if box is not None:
        return image.crop(_parse_box(image, box))
    across, down = _parse_aspect(aspect)
    target = across / down
    if image.width / image.height > target:
        width, height = max(1, round(image.height * target)), image.height
    else:
        width, height = image.width, max(1, round(image.width / target))
    left, top = (image.width - width) // 2, (image.height - height) // 2
    return image.crop((left, top, left + width, top + height))


def resize(image: Image.Image, width: int, height: int) -> Image.Image:
    """Exactly width x height (the shape may change); Lanczos keeps downscales sharp."""
    new_width, new_height = _integer("resize", "width", width), _integer("resize", "height", height)
    _check_output_size("resize", new_width, new_height)
    return image.resize((new_width, new_height), Image.Resampling.LANCZOS)


def upscale(image: Image.Image, factor: int = 2) -> Image.Image:
    value = _number("upscale", "factor", factor)
    if value not in (2, 4):
        raise InvalidRequest(f"Upscale factor must be 2 or 4, not {factor!r}.")
    scale = int(value)
    _check_output_size("upscale", image.width * scale, image.height * scale)
    return image.resize((image.width * scale, image.height * scale), Image.Resampling.LANCZOS)


def border(image: Image.Image, width: int = 16, color: str = "white") -> Image.Image:
    thickness = _integer("border", "width", width)
    if not 1 <= thickness <= MAX_BORDER:
        raise InvalidRequest(f"Border width must be 1 to {MAX_BORDER} px, not {width!r}.")
    try:
        rgb = ImageColor.getrgb(str(color))
    except ValueError:
        raise InvalidRequest(
            f"Unknown border colour {color!r}; use a name like 'white' or a hex code like '#1e90ff'."
        ) from None
    _check_output_size("border", image.width + 2 * thickness, image.height + 2 * thickness)
    fill = (*rgb[:3], rgb[3] if len(rgb) == 4 else 255) if image.mode == "RGBA" else rgb[:3]
    return ImageOps.expand(image, border=thickness, fill=fill)


TRANSFORMS: dict[str, Transform] = {
    "brightness": brightness,
    "contrast": contrast,
    "saturation": saturation,
    "grayscale": grayscale,
    "sepia": sepia,
    "blur": blur,
    "sharpen": sharpen,
    "rotate": rotate,
    "flip": flip,
    "crop": crop,
    "resize": resize,
    "upscale": upscale,
    "border": border,
}


# --------------------------------------------------------------------------------------------
# Entry points


def _lookup(name: str) -> Transform:
    if name not in TRANSFORMS:
        raise InvalidRequest(f"Unknown transform {name!r}; available: {', '.join(TRANSFORMS)}.")
    return TRANSFORMS[name]


def _check_arguments(name: str, transform: Transform, args: Mapping[str, Any]) -> None:
    """Turn Python's TypeError for a wrong keyword into a message a user can act on."""
    parameters = list(inspect.signature(transform).parameters.values())[1:]
    known = [p.name for p in parameters]
    unknown = sorted(set(args) - set(known))
    if unknown:
        takes = ", ".join(known) if known else "no arguments"
        raise InvalidRequest(
            f"Transform {name!r} does not take {', '.join(map(repr, unknown))}; it takes: {takes}."
        )
    missing = [p.name for p in parameters if p.default is inspect.Parameter.empty and p.name not in args]
    if missing:
        raise InvalidRequest(f"Transform {name!r} needs {', '.join(map(repr, missing))}.")


def apply_transform(image: Image.Image, name: str, **args: Any) -> Image.Image:
    """Run one named transform on an RGB or RGBA image (other modes are converted first)."""
    transform = _lookup(name)
    _check_arguments(name, transform, args)
    if image.mode not in ("RGB", "RGBA"):
        has_alpha = "A" in image.getbands() or "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
    return transform(image, **args)


def _percent_change(factor: float) -> str:
    return f"{abs(factor - 1) * 100:.0f}%"


def _describe_factor(factor: float, up: str, down: str, unchanged: str) -> str:
    if factor > 1:
        return f"{up} by {_percent_change(factor)}"
    if factor < 1:
        return f"{down} by {_percent_change(factor)}"
    return unchanged


def _describe_rotation(degrees: float) -> str:
    angle = degrees % 360
    if angle == 0:
        return "rotate 0° (no change)"
    if angle == 180:
        return "rotate 180°"
    if angle < 180:
        return f"rotate {angle:g}° left"
    return f"rotate {360 - angle:g}° right"


def describe_transform(name: str, args: Mapping[str, Any]) -> str:
    """Human words for a transform and its arguments, for replies and the image's history."""
    transform = _lookup(name)
    _check_arguments(name, transform, args)
    if name in ("brightness", "contrast", "saturation"):
        factor = _factor(name, args["factor"])
        words = {
            "brightness": ("brighten", "darken", "brightness unchanged"),
            "contrast": ("increase contrast", "reduce contrast", "contrast unchanged"),
            "saturation": ("increase saturation", "reduce saturation", "saturation unchanged"),
        }[name]
        if name == "saturation" and factor == 0:
            return "remove all colour"
        return _describe_factor(factor, *words)
    if name == "grayscale":
        return "convert to grayscale"
    if name == "sepia":
        return "apply a sepia tone"
    if name == "blur":
        return f"blur (radius {_number('blur', 'radius', args.get('radius', 2)):g} px)"
    if name == "sharpen":
        return "sharpen"
    if name == "rotate":
        return _describe_rotation(_number("rotate", "degrees", args["degrees"]))
    if name == "flip":
        direction = str(args["direction"]).strip().lower()
        if direction not in ("horizontal", "vertical"):
            raise InvalidRequest(
                f"Flip direction must be 'horizontal' or 'vertical', not {args['direction']!r}."
            )
        return "flip horizontally (mirror)" if direction == "horizontal" else "flip vertically (upside down)"
    if name == "crop":
        if args.get("box") is not None:
            left, top, right, bottom = _box_values(args["box"])
            return f"crop to the box from ({left}, {top}) to ({right}, {bottom})"
        across, down = _parse_aspect(args.get("aspect"))
        return f"crop to {across:g}:{down:g} (centred)"
    if name == "resize":
        width, height = (
            _integer("resize", "width", args["width"]),
            _integer("resize", "height", args["height"]),
        )
        return f"resize to {width}×{height} px"
    if name == "upscale":
        return f"upscale {_number('upscale', 'factor', args.get('factor', 2)):g}× (Lanczos)"
    width = _integer("border", "width", args.get("width", 16))
    return f"add a {width} px {args.get('color', 'white')} border"
