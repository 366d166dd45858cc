"""The one door every image and mask goes through before a tool sees it.

Uploads are untrusted bytes: they may not be images, may be cut off, may declare a size that
would take gigabytes to decode, may be animated, 16-bit, CMYK or sideways according to EXIF.
Everything past this module can assume a fully loaded RGB or RGBA image of sane size, and a
single-channel mask that matches its source.

Two doors: `load_image` for bytes and files (uploads), and `check_sources` / `prepare_mask` for
images that are already PIL objects when they reach a backend (a stored file, a 4x upscale, a
caller's own `Image.new`). Every backend's `run` passes its sources and mask through the second
door, so a backend never trusts its caller; for images that came through the first door it is a
no-op that costs microseconds.
"""

from __future__ import annotations

import io
import math
import os
import re
import struct
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from tools.base import InvalidImage

ImageSource = bytes | bytearray | memoryview | str | os.PathLike[str]

#: 50 MB of file: far above any photo or generated PNG, far below a memory problem.
DEFAULT_MAX_BYTES = 50 * 1024 * 1024
#: 40 megapixels (about 7300x5500): bigger than phone photos, small enough to hold a few in memory.
DEFAULT_MAX_PIXELS = 40_000_000
#: How much a mask's width/height ratio may differ from its image's before resizing it would
#: move the marked area somewhere the user did not mean (rounding after a resize stays far below).
MASK_ASPECT_TOLERANCE = 0.02

_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error)
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})


def load_image(
    data: ImageSource,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    notes: list[str] | None = None,
) -> Image.Image:
    """Decode untrusted bytes (or a file path) into a loaded RGB or RGBA image.

    The pixel limit works like Pillow's `Image.MAX_IMAGE_PIXELS` but per call, and it is checked on
    the declared size before any pixel is decoded; Pillow's own global check stays on as a second
    line, with its warning turned into an error, so the effective limit is the smaller of the two.
    Pass `notes` to collect things the user should be told (an animation reduced to its first
    frame, 16-bit colour reduced to 8-bit).
    """
    collected = notes if notes is not None else []
    raw = _read_bytes(data, max_bytes)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(raw))
        except UnidentifiedImageError:
            raise InvalidImage(f"That file is not an image ({_describe_non_image(raw)}).") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _too_large("That image", exc, max_pixels) from None
        except _DECODE_ERRORS as exc:
            raise InvalidImage(f"That image file is damaged and cannot be opened ({_reason(exc)}).") from None
        _check_pixel_count(image.size, max_pixels)
        frames = getattr(image, "n_frames", 1)
        try:
            image.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _too_large("That image", exc, max_pixels) from None
        except _DECODE_ERRORS as exc:
            raise InvalidImage(f"That image file is truncated or damaged ({_reason(exc)}).") from None
    _check_pixel_count(image.size, max_pixels)  # some formats pick their real size only on load
    if frames > 1:
        collected.append(
            f"That {image.format or 'image'} is animated ({frames} frames); only the first frame is used."
        )
    return _to_rgb_or_rgba(_apply_exif_orientation(image, collected), collected)


def check_image(
    image: object,
    *,
    what: str = "The image",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    notes: list[str] | None = None,
) -> Image.Image:
    """A PIL image a tool was handed, made as safe as an upload: loaded, sane size, RGB or RGBA.

    The pixel count is checked on the declared size before the pixels are loaded (a lazily opened
    file may not have decoded yet); a file that turns out damaged on load is an `InvalidImage`,
    not an `OSError` half way through a backend. `what` names the image in messages ("Source
    image 2"). Conversions the user should hear about (16-bit, CMYK) go to `notes`.
    """
    collected = notes if notes is not None else []
    if not isinstance(image, Image.Image):
        raise InvalidImage(f"{what} is not an image (it is a {type(image).__name__}).")
    _check_pixel_count(image.size, max_pixels, what)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _too_large(what, exc, max_pixels) from None
        except _DECODE_ERRORS as exc:
            raise InvalidImage(f"{what} is truncated or damaged ({_reason(exc)}).") from None
    return _to_rgb_or_rgba(image, collected)


def check_sources(
    sources: Sequence[object], *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[tuple[Image.Image, ...], list[str]]:
    """`check_image` for each source image of a request, named by position when there are several.

    Backends call this at the top of `run`, before any network or model work, so a caller that
    skipped `load_image` (or an image that grew past the limit through transforms) gets the same
    clear `InvalidImage` on every backend.
    """
    notes: list[str] = []
    several = len(sources) > 1
    checked = tuple(
        check_image(
            source,
            what=f"Source image {index + 1}" if several else "The source image",
            max_pixels=max_pixels,
            notes=notes,
        )
        for index, source in enumerate(sources)
    )
    return checked, notes


def prepare_mask(
    mask: Image.Image | ImageSource, size: tuple[int, int], *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[Image.Image, list[str]]:
    """Turn a user's mask into an "L" image of exactly `size`: 255 = change, 0 = keep.

    Which channel means "change": a mask with real transparency uses its alpha (opaque = change,
    the way drawing tools export strokes on a transparent layer); anything else uses brightness
    (white = change). A fully opaque RGBA mask therefore also reads as white = change, which is
    what a black-and-white drawing saved as RGBA means.

    A mask of another size is resized to the source, with a note, as long as its shape is the
    same (within `MASK_ASPECT_TOLERANCE`): that is a mask drawn on a scaled copy. A mask of a
    different shape is rejected, because stretching it would mark a different part of the picture.
    """
    notes: list[str] = []
    width, height = size
    if width < 1 or height < 1:
        raise InvalidImage(f"Cannot fit a mask to a {width}x{height} image.")
    if isinstance(mask, Image.Image):
        _check_pixel_count(mask.size, max_pixels, "The mask")
        try:
            mask.load()
        except _DECODE_ERRORS as exc:
            raise InvalidImage(f"The mask is truncated or damaged ({_reason(exc)}).") from None
    elif isinstance(mask, bytes | bytearray | memoryview | str | os.PathLike):
        mask = load_image(mask, max_pixels=max_pixels, notes=notes)
    else:
        raise InvalidImage(f"The mask is not an image (it is a {type(mask).__name__}).")
    single = mask_channel(mask)

    if single.size != (width, height):
        mask_w, mask_h = single.size
        mismatch = abs(math.log((mask_w / mask_h) / (width / height)))
        if mismatch > math.log1p(MASK_ASPECT_TOLERANCE):
            raise InvalidImage(
                f"The mask is {mask_w}x{mask_h} but the image is {width}x{height}; their shapes differ "
                "too much to line up. Draw the mask over the image itself, at the same size."
            )
        binary = set(np.unique(np.asarray(single)).tolist()) <= {0, 255}
        resample = Image.Resampling.NEAREST if binary else Image.Resampling.BILINEAR
        single = single.resize((width, height), resample)
        notes.append(
            f"The mask was {mask_w}x{mask_h}; it was resized to {width}x{height} to match the image."
        )

    if single.getbbox() is None:
        raise InvalidImage(
            "The mask is empty: nothing is marked to change (white or opaque areas mark what to change)."
        )
    values = np.asarray(single)
    if float(((values > 32) & (values < 224)).mean()) > 0.5:  # a photo sent as the mask, most likely
        notes.append(
            "The mask is mostly grey, not black and white (is it a photo?): white areas change, "
            "black ones stay, and grey ones change partly."
        )
    elif bool((values >= 224).all()):
        notes.append("The mask is white all over, so the whole picture is repainted.")
    return single, notes


def _read_bytes(data: ImageSource, max_bytes: int) -> bytes:
    limit_mb = max_bytes / 1024 / 1024
    if isinstance(data, bytes | bytearray | memoryview):
        raw = bytes(data)
    else:
        path = Path(data)
        try:
            if path.is_dir():
                raise InvalidImage(f"{path.name} is a folder, not an image file.")
            size = path.stat().st_size
            if size > max_bytes:
                raise InvalidImage(
                    f"That file is {size / 1024 / 1024:.1f} MB; images up to {limit_mb:.0f} MB are accepted."
                )
            raw = path.read_bytes()
        except FileNotFoundError:
            raise InvalidImage(f"There is no file called {path.name}.") from None
        except PermissionError:
            raise InvalidImage(f"{path.name} cannot be read (permission denied).") from None
    if not raw:
        raise InvalidImage("That file is empty.")
    if len(raw) > max_bytes:
        raise InvalidImage(
            f"That file is {len(raw) / 1024 / 1024:.1f} MB; images up to {limit_mb:.0f} MB are accepted."
        )
    return raw


def _reason(exc: BaseException) -> str:
    """Pillow's own words for what went wrong, ready to sit inside our parentheses."""
    return str(exc).strip().rstrip(".") or type(exc).__name__


def _too_large(what: str, exc: Exception, max_pixels: int) -> InvalidImage:
    """Pillow's bomb guard in Atelier's words (its own speaks of "DOS attack" and its limit)."""
    declared = re.search(r"\((\d+) pixels\)", str(exc))
    size = f" ({int(declared.group(1)) / 1e6:.0f} megapixels)" if declared else ""
    most = min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels)
    return InvalidImage(
        f"{what} is too large to open{size}; images up to {most / 1e6:.0f} megapixels are accepted."
    )


def _check_pixel_count(size: tuple[int, int], max_pixels: int, what: str = "That image") -> None:
    width, height = size
    if width * height > max_pixels:
        raise InvalidImage(
            f"{what} is {width}x{height} ({width * height / 1e6:.0f} megapixels); images up to "
            f"{max_pixels / 1e6:.0f} megapixels are accepted."
        )
    if width < 1 or height < 1:
        raise InvalidImage(f"{what} has no pixels ({width}x{height}).")


def _describe_non_image(raw: bytes) -> str:
    """A hint at what the bytes are, so "not an image" is not a dead end."""
    head = raw[:512].lstrip()
    if head.startswith(b"%PDF"):
        return "it is a PDF; export the page as PNG or JPEG"
    if head[:5].lower() in (b"<?xml", b"<svg ") or b"<svg" in head.lower():
        return "it is an SVG drawing; export it as PNG"
    if head.startswith(b"PK\x03\x04"):
        return "it is a zip archive"
    if head[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1"):
        return "it is a HEIC photo, which is not supported; export it as JPEG"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "its format is not one Pillow can read"
    return "it looks like text"


def _apply_exif_orientation(image: Image.Image, notes: list[str]) -> Image.Image:
    """Phones store photos sideways plus an EXIF tag; without this, they would appear rotated."""
    try:
        return ImageOps.exif_transpose(image)
    except (*_DECODE_ERRORS, KeyError, TypeError):
        notes.append("The photo's orientation tag could not be read, so it is shown as stored.")
        return image


def _to_rgb_or_rgba(image: Image.Image, notes: list[str]) -> Image.Image:
    mode = image.mode
    if mode in ("RGB", "RGBA"):
        return image
    if mode in _SIXTEEN_BIT_MODES or mode == "F":
        notes.append("The image has more than 8 bits per channel; it was reduced to 8-bit colour.")
        return Image.fromarray(_to_eight_bit(np.asarray(image))).convert("RGB")
    if mode == "CMYK":
        notes.append("The image was converted from CMYK (print colours) to RGB; colours may shift slightly.")
        return image.convert("RGB")
    has_alpha = "A" in image.getbands() or "a" in image.getbands() or "transparency" in image.info
    return image.convert("RGBA" if has_alpha else "RGB")


def _to_eight_bit(values: np.ndarray) -> np.ndarray:
    """Scale 16-bit (or float) samples to 0..255; Pillow's own convert clips instead of scaling."""
    if values.dtype.kind == "f":
        peak = float(np.nanmax(values)) if values.size else 0.0
        scaled = values * 255.0 if peak <= 1.0 else values
        return np.clip(np.nan_to_num(scaled), 0, 255).round().astype(np.uint8)
    wide = values.astype(np.int64)
    if wide.max(initial=0) <= 255 and values.dtype.itemsize > 2:
        return np.clip(wide, 0, 255).astype(np.uint8)  # a 32-bit "I" image holding 8-bit values
    return ((np.clip(wide, 0, 65535) * 255 + 32767) // 65535).astype(np.uint8)


def mask_channel(mask: Image.Image) -> Image.Image:
    """The single channel that says where to change; see `prepare_mask` for the rule.

    Every backend reads a mask through this, so one mask means the same area everywhere.
    """
    bands = mask.getbands()
    if "A" in bands or "a" in bands or (mask.mode == "P" and "transparency" in mask.info):
        alpha = mask.convert("RGBA").getchannel("A")
        low, _ = alpha.getextrema()
        if low != 255:  # some transparency: the alpha is the mask
            return alpha
        return mask.convert("RGB").convert("L")
    if mask.mode in _SIXTEEN_BIT_MODES or mask.mode == "F":
        return Image.fromarray(_to_eight_bit(np.asarray(mask)))
    return mask.convert("L")
