"""Each transform does what its name says, and each refuses bad arguments with a useful message."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageFilter

from tools.base import InvalidRequest
from tools.transforms import TRANSFORMS, apply_transform, describe_transform

RED, GREEN, BLUE, WHITE = (220, 30, 30), (30, 200, 60), (40, 60, 210), (250, 250, 250)
WIDTH, HEIGHT = 40, 30


@pytest.fixture
def quadrants() -> Image.Image:
    """Four coloured quadrants: red top-left, green top-right, blue bottom-left, white bottom-right."""
    pixels = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    pixels[: HEIGHT // 2, : WIDTH // 2] = RED
    pixels[: HEIGHT // 2, WIDTH // 2 :] = GREEN
    pixels[HEIGHT // 2 :, : WIDTH // 2] = BLUE
    pixels[HEIGHT // 2 :, WIDTH // 2 :] = WHITE
    return Image.fromarray(pixels)


@pytest.fixture
def checkerboard() -> Image.Image:
    tiles = (np.indices((64, 64)).sum(axis=0) // 4 % 2 * 255).astype(np.uint8)
    return Image.fromarray(np.stack([tiles] * 3, axis=-1))


def array(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


def test_the_registry_has_exactly_the_agreed_names() -> None:
    assert set(TRANSFORMS) == {
        "brightness",
        "contrast",
        "saturation",
        "grayscale",
        "sepia",
        "blur",
        "sharpen",
        "rotate",
        "flip",
        "crop",
        "resize",
        "upscale",
        "border",
    }


# --------------------------------------------------------------------------------------------
# Colour and tone


def test_brightness_scales_light(quadrants: Image.Image) -> None:
    brighter = apply_transform(quadrants, "brightness", factor=1.5)
    darker = apply_transform(quadrants, "brightness", factor="0.5")  # JSON tool calls send strings
    assert array(darker).mean() < array(quadrants).mean() < array(brighter).mean()
    assert array(apply_transform(quadrants, "brightness", factor=0)).max() == 0


def test_contrast_zero_is_flat_grey(quadrants: Image.Image) -> None:
    flat = array(apply_transform(quadrants, "contrast", factor=0))
    assert flat.std() == 0
    assert array(apply_transform(quadrants, "contrast", factor=2)).std() > array(quadrants).std()


def test_saturation_zero_removes_colour(quadrants: Image.Image) -> None:
    grey = array(apply_transform(quadrants, "saturation", factor=0))
    assert np.abs(grey[..., 0] - grey[..., 1]).max() <= 1
    vivid = array(apply_transform(quadrants, "saturation", factor=2))
    assert np.ptp(vivid[0, 0]) >= np.ptp(array(quadrants)[0, 0])


def test_grayscale_has_equal_channels_and_keeps_alpha(quadrants: Image.Image) -> None:
    grey = apply_transform(quadrants, "grayscale")
    values = array(grey)
    assert grey.mode == "RGB"
    assert np.array_equal(values[..., 0], values[..., 1]) and np.array_equal(values[..., 1], values[..., 2])

    translucent = quadrants.convert("RGBA")
    translucent.putalpha(100)
    grey_rgba = apply_transform(translucent, "grayscale")
    assert grey_rgba.mode == "RGBA"
    assert np.all(np.asarray(grey_rgba)[..., 3] == 100)


def test_sepia_is_warm_brown(quadrants: Image.Image) -> None:
    toned = array(apply_transform(quadrants, "sepia"))
    assert np.all(toned[..., 0] >= toned[..., 1]) and np.all(toned[..., 1] >= toned[..., 2])


def test_blur_softens_and_sharpen_crisps(checkerboard: Image.Image) -> None:
    blurred = apply_transform(checkerboard, "blur", radius=2)
    assert array(blurred).std() < array(checkerboard).std()
    assert array(apply_transform(checkerboard, "blur")).std() == array(blurred).std()  # radius defaults to 2

    soft = checkerboard.filter(ImageFilter.GaussianBlur(1.5))
    sharpened = apply_transform(soft, "sharpen")

    def edge_energy(image: Image.Image) -> float:
        return float(np.asarray(image.convert("L").filter(ImageFilter.FIND_EDGES), dtype=np.float64).mean())

    assert edge_energy(sharpened) > edge_energy(soft)


# --------------------------------------------------------------------------------------------
# Geometry


def test_rotate_left_is_a_quarter_turn_counter_clockwise(quadrants: Image.Image) -> None:
    turned = apply_transform(quadrants, "rotate", degrees=90)
    assert turned.size == (HEIGHT, WIDTH)
    # counter-clockwise: the top-left corner goes to the bottom-left
    assert turned.getpixel((0, turned.height - 1)) == RED
    assert turned.getpixel((0, 0)) == GREEN


def test_rotate_right_and_odd_angles(quadrants: Image.Image) -> None:
    right = apply_transform(quadrants, "rotate", degrees=-90)
    assert right.size == (HEIGHT, WIDTH)
    assert right.getpixel((right.width - 1, 0)) == RED
    tilted = apply_transform(quadrants, "rotate", degrees=30)
    assert tilted.width > WIDTH and tilted.height > HEIGHT  # the canvas grows to fit
    assert apply_transform(quadrants, "rotate", degrees=360).tobytes() == quadrants.tobytes()


def test_flip(quadrants: Image.Image) -> None:
    mirrored = apply_transform(quadrants, "flip", direction="horizontal")
    assert mirrored.getpixel((WIDTH - 1, 0)) == RED
    upside_down = apply_transform(quadrants, "flip", direction="vertical")
    assert upside_down.getpixel((0, HEIGHT - 1)) == RED


def test_crop_by_aspect_is_centred(quadrants: Image.Image) -> None:
    square = apply_transform(quadrants, "crop", aspect="1:1")
    assert square.size == (HEIGHT, HEIGHT)
    assert square.getpixel((0, 0)) == RED and square.getpixel((HEIGHT - 1, 0)) == GREEN
    wide = apply_transform(quadrants, "crop", aspect="16:9")
    assert wide.size == (WIDTH, round(WIDTH * 9 / 16))


def test_crop_by_box(quadrants: Image.Image) -> None:
    corner = apply_transform(quadrants, "crop", box=[20, 15, 40, 30])  # JSON gives lists
    assert corner.size == (20, 15)
    assert np.all(np.asarray(corner) == WHITE)


def test_resize_and_upscale(quadrants: Image.Image) -> None:
    assert apply_transform(quadrants, "resize", width=20, height=10).size == (20, 10)
    assert apply_transform(quadrants, "upscale", factor=2).size == (2 * WIDTH, 2 * HEIGHT)
    assert apply_transform(quadrants, "upscale", factor=4).size == (4 * WIDTH, 4 * HEIGHT)


def test_border_adds_a_frame(quadrants: Image.Image) -> None:
    framed = apply_transform(quadrants, "border", width=5, color="red")
    assert framed.size == (WIDTH + 10, HEIGHT + 10)
    assert framed.getpixel((0, 0)) == (255, 0, 0)
    assert framed.getpixel((5, 5)) == RED
    assert apply_transform(quadrants, "border").getpixel((0, 0)) == (255, 255, 255)


def test_other_modes_are_converted_first() -> None:
    grey = Image.new("L", (10, 6), 128)
    assert apply_transform(grey, "rotate", degrees=90).mode == "RGB"
    palette = Image.new("P", (10, 6))
    palette.info["transparency"] = 0
    assert apply_transform(palette, "flip", direction="vertical").mode == "RGBA"


# --------------------------------------------------------------------------------------------
# Refusals


@pytest.mark.parametrize(
    ("name", "args", "message"),
    [
        ("foo", {}, "Unknown transform 'foo'; available: brightness, contrast"),
        ("brightness", {"factor": -1}, "Brightness factor must be between 0 and 10"),
        ("brightness", {}, "needs 'factor'"),
        ("contrast", {"factor": 20}, "Contrast factor must be between 0 and 10"),
        ("saturation", {"factor": True}, "must be a number"),
        ("grayscale", {"strength": 1}, "does not take 'strength'; it takes: no arguments"),
        ("sepia", {"amount": 0.5}, "does not take 'amount'"),
        ("blur", {"radius": 0}, "Blur radius must be above 0"),
        ("sharpen", {"amount": 2}, "does not take 'amount'"),
        ("rotate", {"degrees": "left"}, "'degrees' must be a number"),
        ("rotate", {"degrees": float("nan")}, "must be a finite number"),
        ("flip", {"direction": "diagonal"}, "must be 'horizontal' or 'vertical'"),
        ("crop", {"box": (0, 0, 50, 10)}, r"not inside the 40x30 image"),
        ("crop", {"box": (10, 10, 5, 20)}, "left < right"),
        ("crop", {"aspect": "wide"}, "must look like '1:1'"),
        ("crop", {"aspect": "0:1"}, "two positive numbers"),
        ("crop", {}, "either an aspect"),
        ("crop", {"aspect": "1:1", "box": (0, 0, 5, 5)}, "not both"),
        ("resize", {"width": 0, "height": 10}, "has no pixels"),
        ("resize", {"width": 9000, "height": 10}, "limit is 8192 px per side"),
        ("resize", {"width": 7000, "height": 7000}, "40 megapixels"),
        ("resize", {"width": 10.5, "height": 10}, "whole number"),
        ("upscale", {"factor": 3}, "Upscale factor must be 2 or 4"),
        ("border", {"width": 0}, "Border width must be 1 to 1024"),
        ("border", {"color": "blurple"}, "Unknown border colour 'blurple'"),
    ],
)
def test_bad_arguments_are_refused_with_a_reason(
    quadrants: Image.Image, name: str, args: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidRequest, match=message):
        apply_transform(quadrants, name, **args)


def test_output_size_is_capped_before_any_work() -> None:
    long_strip = Image.new("RGB", (2100, 4))
    with pytest.raises(InvalidRequest, match="8400x16"):
        apply_transform(long_strip, "upscale", factor=4)


# --------------------------------------------------------------------------------------------
# Descriptions


@pytest.mark.parametrize(
    ("name", "args", "words"),
    [
        ("rotate", {"degrees": 90}, "rotate 90° left"),
        ("rotate", {"degrees": -90}, "rotate 90° right"),
        ("rotate", {"degrees": 180}, "rotate 180°"),
        ("brightness", {"factor": 1.2}, "brighten by 20%"),
        ("brightness", {"factor": 0.7}, "darken by 30%"),
        ("contrast", {"factor": 1.5}, "increase contrast by 50%"),
        ("saturation", {"factor": 0}, "remove all colour"),
        ("grayscale", {}, "convert to grayscale"),
        ("sepia", {}, "apply a sepia tone"),
        ("blur", {}, "blur (radius 2 px)"),
        ("sharpen", {}, "sharpen"),
        ("flip", {"direction": "horizontal"}, "flip horizontally (mirror)"),
        ("flip", {"direction": "vertical"}, "flip vertically (upside down)"),
        ("crop", {"aspect": "16:9"}, "crop to 16:9 (centred)"),
        ("crop", {"box": (1, 2, 30, 40)}, "crop to the box from (1, 2) to (30, 40)"),
        ("resize", {"width": 800, "height": 600}, "resize to 800×600 px"),
        ("upscale", {"factor": 4}, "upscale 4× (Lanczos)"),
        ("border", {"width": 8, "color": "black"}, "add a 8 px black border"),
    ],
)
def test_descriptions_read_like_the_request(name: str, args: dict[str, Any], words: str) -> None:
    assert describe_transform(name, args) == words


def test_describing_an_unknown_transform_fails_like_applying_it() -> None:
    with pytest.raises(InvalidRequest, match="Unknown transform 'swirl'"):
        describe_transform("swirl", {})
    with pytest.raises(InvalidRequest, match="needs 'degrees'"):
        describe_transform("rotate", {})
