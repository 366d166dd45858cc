"""Untrusted uploads become safe RGB(A) images, or a clear InvalidImage; masks fit their source."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tools.base import InvalidImage
from tools.image_input import check_image, check_sources, load_image, prepare_mask


def encode(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def noisy_rgb(width: int = 64, height: int = 48, seed: int = 0) -> Image.Image:
    """Noise compresses badly, so half of its file really is half of its pixels."""
    values = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(values)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares a size but carries almost no data: a decompression bomb for free."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


# --------------------------------------------------------------------------------------------
# Accepting real images


def test_a_png_from_bytes_and_from_a_path(tmp_path: Path) -> None:
    original = noisy_rgb()
    data = encode(original)
    from_bytes = load_image(data)
    assert from_bytes.mode == "RGB" and from_bytes.size == original.size
    assert from_bytes.tobytes() == original.tobytes()

    path = tmp_path / "photo.png"
    path.write_bytes(data)
    assert load_image(path).tobytes() == original.tobytes()
    assert load_image(str(path)).tobytes() == original.tobytes()


def test_animated_gif_gives_its_first_frame_with_a_note() -> None:
    frames = [Image.new("RGB", (16, 16), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    notes: list[str] = []
    image = load_image(data, notes=notes)
    assert image.mode == "RGB"
    red, green, blue = image.getpixel((8, 8))  # type: ignore[misc]
    assert red > 200 and green < 50 and blue < 50
    assert notes == ["That GIF is animated (3 frames); only the first frame is used."]


def test_16_bit_png_is_scaled_not_clipped() -> None:
    deep = np.zeros((8, 8), dtype=np.uint16)
    deep[:, :4] = 65535
    deep[:, 4:] = 32896  # half way: 128 in 8 bits (Pillow's own convert would clip it to 255)
    data = encode(Image.fromarray(deep))
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    notes: list[str] = []
    image = load_image(data, notes=notes)
    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == (255, 255, 255)
    assert image.getpixel((7, 0)) == (128, 128, 128)
    assert any("8-bit" in note for note in notes)


def test_cmyk_jpeg_becomes_rgb() -> None:
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # no cyan, full magenta and yellow: red
    notes: list[str] = []
    image = load_image(encode(cmyk, "JPEG", quality=95), notes=notes)
    assert image.mode == "RGB"
    red, green, blue = image.getpixel((8, 8))  # type: ignore[misc]
    assert red > 200 and green < 60 and blue < 60
    assert any("CMYK" in note for note in notes)


def test_exif_orientation_is_applied() -> None:
    stored = Image.new("RGB", (40, 20), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 20, 20))  # left half red, as the sensor stored it
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    image = load_image(encode(stored, "JPEG", exif=exif, quality=95))
    assert image.size == (20, 40)
    top, bottom = image.getpixel((10, 5)), image.getpixel((10, 35))
    assert top[0] > 200 and top[2] < 60  # type: ignore[index]
    assert bottom[2] > 200 and bottom[0] < 60  # type: ignore[index]


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("L", "RGB"), ("1", "RGB"), ("LA", "RGBA"), ("RGBA", "RGBA"), ("P", "RGB")],
)
def test_other_modes_become_rgb_or_rgba(mode: str, expected: str) -> None:
    assert load_image(encode(Image.new(mode, (8, 8)))).mode == expected


def test_palette_with_transparency_keeps_it() -> None:
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image = load_image(encode(palette, transparency=0))
    assert image.mode == "RGBA"


# --------------------------------------------------------------------------------------------
# Refusing the rest


@pytest.mark.parametrize(
    ("data", "hint"),
    [
        (b"hello, this is a text file\n", "it looks like text"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj", "it is a PDF"),
        (b'<svg xmlns="http://www.w3.org/2000/svg"></svg>', "it is an SVG drawing"),
        (bytes(range(256)) * 4, "its format is not one Pillow can read"),
    ],
)
def test_not_an_image(data: bytes, hint: str) -> None:
    with pytest.raises(InvalidImage, match=r"^That file is not an image \(") as caught:
        load_image(data)
    assert hint in caught.value.user_message


def test_empty_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(InvalidImage, match="That file is empty"):
        load_image(b"")
    with pytest.raises(InvalidImage, match=r"no file called nothing\.png"):
        load_image(tmp_path / "nothing.png")
    with pytest.raises(InvalidImage, match="is a folder"):
        load_image(tmp_path)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_files_are_rejected(fmt: str) -> None:
    data = encode(noisy_rgb(), fmt)
    with pytest.raises(InvalidImage, match="truncated or damaged"):
        load_image(data[: len(data) // 2])


def test_files_over_the_byte_limit_are_rejected(tmp_path: Path) -> None:
    data = encode(noisy_rgb())
    with pytest.raises(InvalidImage, match="MB; images up to"):
        load_image(data, max_bytes=len(data) - 1)
    path = tmp_path / "big.png"
    path.write_bytes(data)
    with pytest.raises(InvalidImage, match="MB; images up to"):
        load_image(path, max_bytes=1000)


def test_declared_size_over_our_limit_is_refused_before_decoding() -> None:
    with pytest.raises(InvalidImage, match=r"3000x3000 \(9 megapixels\); images up to 1 megapixels"):
        load_image(png_header_only(3000, 3000), max_pixels=1_000_000)


@pytest.mark.parametrize(
    "side",
    [
        10_000,  # 100 MP: over Pillow's MAX_IMAGE_PIXELS, which warns; the warning must become an error
        100_000,  # 10 000 MP: over twice the limit, where Pillow itself raises
    ],
)
def test_decompression_bombs_are_refused(side: int) -> None:
    with pytest.raises(InvalidImage, match="too large to open") as refused:
        load_image(png_header_only(side, side), max_pixels=10**12)
    # in Atelier's words, with the limit that applied (Pillow's), not Pillow's "DOS attack"
    assert str(refused.value).endswith("images up to 89 megapixels are accepted.")
    assert "DOS" not in str(refused.value) and f"{side * side / 1e6:.0f} megapixels" in str(refused.value)


# --------------------------------------------------------------------------------------------
# Images handed to a backend as PIL objects (the door every backend's run() goes through)


def test_checked_rgb_and_rgba_sources_pass_untouched() -> None:
    rgb, rgba = noisy_rgb(), noisy_rgb().convert("RGBA")
    checked, notes = check_sources([rgb, rgba])
    assert checked[0] is rgb and checked[1] is rgba
    assert notes == []


@pytest.mark.parametrize(("mode", "expected"), [("L", "RGB"), ("P", "RGB"), ("LA", "RGBA"), ("1", "RGB")])
def test_checked_sources_in_other_modes_become_rgb_or_rgba(mode: str, expected: str) -> None:
    (image,), _ = check_sources([noisy_rgb().convert(mode)])
    assert image.mode == expected and image.size == (64, 48)


def test_checked_16_bit_and_cmyk_sources_are_converted_with_a_note() -> None:
    deep = Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16))
    cmyk = noisy_rgb().convert("CMYK")
    (a, b), notes = check_sources([deep, cmyk])
    assert a.mode == "RGB" and a.getpixel((0, 0)) == (255, 255, 255)  # scaled, not clipped
    assert b.mode == "RGB"
    assert any("8 bits" in note for note in notes) and any("CMYK" in note for note in notes)


def test_a_source_that_is_not_an_image_is_named_by_position() -> None:
    with pytest.raises(InvalidImage, match=r"^Source image 2 is not an image \(it is a bytes\)\.$"):
        check_sources([noisy_rgb(), encode(noisy_rgb())])
    with pytest.raises(InvalidImage, match=r"^The source image is not an image \(it is a NoneType\)\.$"):
        check_sources([None])


def test_a_source_over_the_pixel_limit_is_refused() -> None:
    with pytest.raises(
        InvalidImage, match=r"^The source image is 2000x1000 \(2 megapixels\); images up to 1"
    ):
        check_sources([Image.new("1", (2000, 1000))], max_pixels=1_000_000)
    with pytest.raises(InvalidImage, match="has no pixels"):
        check_image(Image.new("RGB", (0, 5)))


def test_a_lazily_opened_damaged_file_is_an_invalid_image(tmp_path: Path) -> None:
    path = tmp_path / "cut.png"
    path.write_bytes(encode(noisy_rgb(256, 256))[:5000])
    with Image.open(path) as lazy, pytest.raises(InvalidImage, match=r"^The image is truncated or damaged"):
        check_image(lazy)


# --------------------------------------------------------------------------------------------
# Masks


def test_a_grey_mask_of_the_right_size_passes_unchanged() -> None:
    grey = Image.new("L", (32, 24), 0)
    grey.paste(255, (8, 8, 16, 16))
    mask, notes = prepare_mask(grey, (32, 24))
    assert mask.mode == "L" and mask.tobytes() == grey.tobytes()
    assert notes == []


def test_transparency_marks_the_area_when_there_is_some() -> None:
    layer = np.zeros((24, 32, 4), dtype=np.uint8)
    layer[8:16, 8:16] = (0, 0, 0, 255)  # black but opaque stroke: alpha, not colour, decides
    mask, _ = prepare_mask(Image.fromarray(layer), (32, 24))
    values = np.asarray(mask)
    assert values[10, 10] == 255 and values[0, 0] == 0


def test_an_opaque_rgba_or_rgb_mask_uses_brightness() -> None:
    drawing = np.zeros((24, 32, 3), dtype=np.uint8)
    drawing[8:16, 8:16] = 255
    for mode in ("RGB", "RGBA"):
        mask, _ = prepare_mask(Image.fromarray(drawing).convert(mode), (32, 24))
        values = np.asarray(mask)
        assert mask.mode == "L" and values[10, 10] == 255 and values[0, 0] == 0


def test_a_mask_of_another_size_is_resized_with_a_note() -> None:
    small = Image.new("L", (16, 12), 0)
    small.paste(255, (4, 4, 8, 8))
    mask, notes = prepare_mask(small, (32, 24))
    assert mask.size == (32, 24)
    assert set(np.unique(np.asarray(mask)).tolist()) == {0, 255}  # a hard mask stays hard
    assert notes == ["The mask was 16x12; it was resized to 32x24 to match the image."]


def test_a_mask_of_another_shape_is_refused() -> None:
    with pytest.raises(InvalidImage, match="shapes differ too much"):
        prepare_mask(Image.new("L", (30, 10), 255), (32, 24))


def test_an_empty_mask_is_refused() -> None:
    with pytest.raises(InvalidImage, match="The mask is empty"):
        prepare_mask(Image.new("L", (32, 24), 0), (32, 24))


def test_a_mask_can_arrive_as_file_bytes() -> None:
    drawing = Image.new("L", (32, 24), 0)
    drawing.paste(255, (0, 0, 10, 10))
    mask, _ = prepare_mask(encode(drawing), (32, 24))
    assert np.asarray(mask)[5, 5] == 255
    with pytest.raises(InvalidImage, match="not an image"):
        prepare_mask(b"definitely not a png", (32, 24))


def test_a_mask_that_is_no_image_or_too_big_is_refused() -> None:
    with pytest.raises(InvalidImage, match=r"^The mask is not an image \(it is a list\)\.$"):
        prepare_mask([1, 2, 3], (32, 24))  # type: ignore[arg-type]
    with pytest.raises(InvalidImage, match=r"^The mask is 4000x3000 \(12 megapixels\)"):
        prepare_mask(Image.new("1", (4000, 3000), 1), (32, 24), max_pixels=1_000_000)


def test_a_photo_sent_as_the_mask_or_an_all_white_one_is_named_in_a_note() -> None:
    photo = Image.new("RGB", (64, 48), (30, 90, 200))  # a blue picture: grey in brightness
    _, notes = prepare_mask(photo, (64, 48))
    assert any("mostly grey, not black and white (is it a photo?)" in note for note in notes)
    _, notes = prepare_mask(Image.new("L", (64, 48), 255), (64, 48))
    assert notes == ["The mask is white all over, so the whole picture is repainted."]
    half = Image.new("L", (64, 48), 0)
    half.paste(255, (0, 0, 32, 48))
    assert prepare_mask(half, (64, 48))[1] == []  # a drawn mask says nothing
