"""The offline backend must draw what the prompt says, in ways simple pixel statistics can see."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageFilter, ImageOps

from tools.base import (
    Cancelled,
    CancelToken,
    ImageBackend,
    ImageRequest,
    ImageResult,
    InvalidImage,
    InvalidRequest,
    Operation,
    UnsupportedOperation,
)
from tools.offline import RENDERER, OfflineBackend
from tools.offline_scene import parse_scene

SIZE = 192

FOX_AT_NIGHT = "a red fox in the snow at night"
SEA_SUNSET = "sunset over the sea, watercolor"
GREEN_FOREST = "a green forest at noon"


def run(prompt: str, operation: Operation = Operation.GENERATE, **fields: Any) -> ImageResult:
    fields.setdefault("width", SIZE)
    fields.setdefault("height", SIZE)
    fields.setdefault("seed", 1)
    return OfflineBackend().run(ImageRequest(operation=operation, prompt=prompt, **fields))


def render(prompt: str, **fields: Any) -> Image.Image:
    return run(prompt, **fields).images[0].image


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float64)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def mean_difference(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(pixels(a) - pixels(b)).mean())


def hue_degrees(image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    hsv = np.asarray(image.convert("HSV"), dtype=np.float64)
    return hsv[..., 0] * 360 / 255, hsv[..., 1] / 255


# --------------------------------------------------------------------------------------------
# Reading the prompt


def test_rewritten_prompt_boilerplate_draws_nothing_extra() -> None:
    scene = parse_scene(
        "a red fox in the snow at night, centered composition, soft lighting, highly detailed, "
        "sharp focus, depth of field, golden ratio"
    )
    assert scene.time_of_day == "night"
    assert scene.weather == {"snow"}
    assert [(s.kind, s.colour_name) for s in scene.subjects] == [("fox", "red")]
    assert scene.composition == "center"
    assert scene.elements == frozenset()  # "field" and "golden" came from boilerplate
    assert scene.palette == ()


def test_colour_words_attach_to_the_thing_after_them() -> None:
    scene = parse_scene("a green forest and red and gold flowers under a purple sky")
    assert dict(scene.element_colours) == {
        "forest": ("green",),
        "flowers": ("red", "gold"),
        "sky": ("purple",),
    }


def test_phrases_win_over_their_words() -> None:
    scene = parse_scene("a lighthouse at golden hour, black and white")
    assert scene.time_of_day == "sunset"
    assert scene.style == "monochrome"
    assert scene.palette == ()


def test_negated_words_are_not_drawn() -> None:
    scene = parse_scene("an empty beach, no people, without any snow, at night")
    assert scene.subjects == ()
    assert scene.weather == frozenset()
    assert scene.time_of_day == "night"
    assert scene.elements == {"sea"}


def test_a_coloured_background_colours_the_sky() -> None:
    scene = parse_scene("a cat on a pink background")
    assert dict(scene.element_colours) == {"sky": ("pink",)}
    assert scene.subjects[0].colour_name is None


def test_negative_prompt_is_never_drawn() -> None:
    plain = run(GREEN_FOREST)
    with_negative = run(GREEN_FOREST, negative_prompt="snow, night, red fox, blurry")
    assert pixels(plain.images[0].image).tolist() == pixels(with_negative.images[0].image).tolist()
    assert any("negative prompt" in note for note in with_negative.notes)


# --------------------------------------------------------------------------------------------
# The picture agrees with the words


def test_red_fox_in_snow_at_night() -> None:
    image = pixels(render(FOX_AT_NIGHT))
    red, green, blue = image[..., 0], image[..., 1], image[..., 2]
    fox_red = (red > 100) & (red > 2.5 * green) & (red > 2.5 * blue)
    assert fox_red.mean() > 0.005, "a red fox should leave clearly red pixels"

    ground = image[int(SIZE * 0.94) :]  # below the fox's feet
    ground_colour = ground.reshape(-1, 3).mean(axis=0)
    assert ground_colour.mean() > 100, "snow should be light even at night"
    assert np.ptp(ground_colour) < 40, "snow should be white-ish, not coloured"
    sky_top = image[: int(SIZE * 0.2)].mean()
    assert sky_top < 60, "a night sky is dark"
    assert ground_colour.mean() > 2 * sky_top


def test_night_is_darker_than_noon() -> None:
    night = pixels(render(FOX_AT_NIGHT)).mean()
    noon = pixels(render("a red fox in the snow at noon")).mean()
    forest_night = pixels(render("a green forest at night")).mean()
    forest_noon = pixels(render(GREEN_FOREST)).mean()
    assert night + 50 < noon
    assert forest_night + 50 < forest_noon


def test_green_forest_at_noon_is_mostly_green() -> None:
    image = render(GREEN_FOREST)
    hue, saturation = hue_degrees(image)
    coloured = saturation > 0.25
    green = coloured & (hue > 75) & (hue < 165)
    blue = coloured & (hue >= 165) & (hue < 260)
    warm = coloured & ((hue <= 75) | (hue >= 260))
    assert green.sum() > max(blue.sum(), warm.sum()), "green is the dominant hue"
    lower_half = green[SIZE // 2 :]
    assert lower_half.mean() > 0.7
    assert pixels(image).mean() > 100, "noon is bright"


def test_sunset_over_the_sea_has_a_warm_sky_and_blue_sea() -> None:
    image = pixels(render(SEA_SUNSET))
    sky = image[: SIZE // 2 - SIZE // 10].reshape(-1, 3).mean(axis=0)
    sea = image[-SIZE // 3 :].reshape(-1, 3).mean(axis=0)
    assert sky[0] > sky[2] + 40, f"sunset sky should be warm, got mean RGB {sky}"
    assert sea[2] > sea[0], f"the sea should be blue-ish, got mean RGB {sea}"


@pytest.mark.parametrize(("composition", "left_side"), [("on the left", True), ("on the right", False)])
def test_composition_places_the_subject(composition: str, left_side: bool) -> None:
    image = pixels(render(f"a red cat in a meadow {composition}"))
    red = (
        (image[..., 0] > 120) & (image[..., 0] > 2.5 * image[..., 1]) & (image[..., 0] > 2.5 * image[..., 2])
    )
    centre_x = np.nonzero(red)[1].mean()
    assert bool(centre_x < SIZE / 2) is left_side


@pytest.mark.parametrize(
    "addition",
    [
        "with mountains",
        "with a city",
        "with a house",
        "with a road",
        "with flowers",
        "with a lake",
        "with a horse",
        "with a woman",
        "in the rain",
        "in the fog",
        "at dawn",
        "with a bird",
    ],
)
def test_each_keyword_changes_the_picture(addition: str) -> None:
    plain, added = pixels(render("a meadow")), pixels(render(f"a meadow {addition}"))
    clearly_changed = np.abs(plain - added).max(axis=-1) > 30
    assert clearly_changed.mean() > 0.01, (
        f"{addition!r} changed only {clearly_changed.mean():.1%} of the picture"
    )


def test_styles_are_visible() -> None:
    prompt = "a red fox in a green forest at noon"
    plain = render(prompt)

    mono = pixels(render(f"{prompt}, black and white"))
    assert np.array_equal(mono[..., 0], mono[..., 1]) and np.array_equal(mono[..., 1], mono[..., 2])

    sepia = pixels(render(f"{prompt}, sepia"))
    assert (sepia[..., 0] >= sepia[..., 1]).mean() > 0.99 and (sepia[..., 1] >= sepia[..., 2]).mean() > 0.99

    pixel_art = render(f"{prompt}, pixel art")
    assert len(np.unique(np.asarray(pixel_art).reshape(-1, 3), axis=0)) <= 24

    line_art = pixels(render(f"{prompt}, line art"))
    assert line_art.mean() > pixels(plain).mean() + 40, "line art is mostly paper"

    neon = pixels(render(f"{prompt}, neon"))
    assert neon.mean() < pixels(plain).mean(), "neon is glowing lines on a dark picture"

    pastel = pixels(render(f"{prompt}, pastel"))
    assert pastel.min() > 90 and pastel.mean() > pixels(plain).mean()

    for style in ("watercolor", "oil painting"):
        assert mean_difference(plain, render(f"{prompt}, {style}")) > 5, style


# --------------------------------------------------------------------------------------------
# Seeds


def test_same_seed_gives_identical_png_bytes() -> None:
    first = run(FOX_AT_NIGHT, seed=123)
    second = run(FOX_AT_NIGHT, seed=123)
    assert png_bytes(first.images[0].image) == png_bytes(second.images[0].image)


def test_another_seed_moves_things() -> None:
    first = render(FOX_AT_NIGHT, seed=1)
    other = render(FOX_AT_NIGHT, seed=2)
    changed = np.abs(pixels(first) - pixels(other)).max(axis=-1) > 30
    assert changed.mean() > 0.05
    assert mean_difference(first, other) > 6


def test_no_seed_is_still_deterministic_and_recorded() -> None:
    first = run(GREEN_FOREST, seed=None)
    second = run(GREEN_FOREST, seed=None)
    assert png_bytes(first.images[0].image) == png_bytes(second.images[0].image)
    assert isinstance(first.images[0].seed, int)
    assert first.params["seed"] == first.images[0].seed


def test_batch_uses_derived_seeds_and_each_image_replays_alone() -> None:
    batch = run(FOX_AT_NIGHT, seed=40, n=3)
    assert [image.seed for image in batch.images] == [40, 41, 42]
    assert batch.params["seeds"] == [40, 41, 42]
    alone = render(FOX_AT_NIGHT, seed=41)
    assert png_bytes(batch.images[1].image) == png_bytes(alone)


# --------------------------------------------------------------------------------------------
# Operations on a source image


def square_mask(size: int = SIZE, start: int = 48, stop: int = 144) -> Image.Image:
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[start:stop, start:stop] = 255
    return Image.fromarray(mask)


def test_inpaint_changes_only_the_masked_area() -> None:
    source = render(GREEN_FOREST)
    mask = square_mask()
    result = run(FOX_AT_NIGHT, Operation.INPAINT, sources=(source,), mask=mask)
    out, before = pixels(result.images[0].image), pixels(source)
    outside = np.asarray(mask) == 0
    assert np.array_equal(out[outside], before[outside]), "every pixel outside the mask must stay"
    assert np.abs(out[~outside] - before[~outside]).mean() > 30
    assert result.params["strength"] == 1.0


def test_inpaint_accepts_a_transparent_mask_of_another_size() -> None:
    source = render(GREEN_FOREST)
    small = np.zeros((SIZE // 2, SIZE // 2, 4), dtype=np.uint8)
    small[24:72, 24:72] = (255, 255, 255, 255)  # opaque square on a transparent layer
    result = run(FOX_AT_NIGHT, Operation.INPAINT, sources=(source,), mask=Image.fromarray(small))
    out, before = pixels(result.images[0].image), pixels(source)
    keep = np.asarray(square_mask()) == 0
    assert np.array_equal(out[keep], before[keep])
    assert any("resized" in note for note in result.notes)


def test_inpaint_keeps_alpha_of_an_rgba_source_outside_the_mask() -> None:
    source = render(GREEN_FOREST).convert("RGBA")
    source.putalpha(128)
    result = run(FOX_AT_NIGHT, Operation.INPAINT, sources=(source,), mask=square_mask())
    out = np.asarray(result.images[0].image)
    keep = np.asarray(square_mask()) == 0
    assert np.array_equal(out[keep], np.asarray(source)[keep])


def test_inpaint_without_a_mask_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="needs a mask"):
        run(FOX_AT_NIGHT, Operation.INPAINT, sources=(render(GREEN_FOREST),))


def test_img2img_strength_sets_how_far_it_moves() -> None:
    source = render(GREEN_FOREST)
    gentle = run(FOX_AT_NIGHT, Operation.IMG2IMG, sources=(source,), strength=0.2)
    strong = run(FOX_AT_NIGHT, Operation.IMG2IMG, sources=(source,), strength=0.9)
    near = mean_difference(gentle.images[0].image, source)
    far = mean_difference(strong.images[0].image, source)
    assert near < 0.35 * far
    assert near > 1
    assert gentle.params["strength"] == 0.2
    assert run(FOX_AT_NIGHT, Operation.IMG2IMG, sources=(source,)).params["strength"] == 0.6


# img2img is a restyle: the source's layout with the prompt's look


def daytime_upload(size: int = SIZE) -> Image.Image:
    """A picture that is not one of the renderer's own: sky, sun, a red house on a green field."""
    rows = np.linspace(0, 1, size)[:, None, None]
    sky = (1 - rows) * np.array((110, 170, 235)) + rows * np.array((200, 225, 245))
    picture = np.broadcast_to(sky, (size, size, 3)).copy()
    picture[size * 5 // 8 :] = (90, 160, 70)
    ys, xs = np.ogrid[:size, :size]
    picture[(xs - size * 3 // 4) ** 2 + (ys - size // 5) ** 2 < (size // 12) ** 2] = (255, 245, 200)
    picture[size // 2 : size * 3 // 4, size // 6 : size * 5 // 12] = (200, 50, 40)
    picture[size * 5 // 8 : size * 3 // 4, size // 4 : size // 3] = (70, 40, 30)  # the door
    grain = np.random.default_rng(5).normal(0, 3, picture.shape)
    return Image.fromarray(np.clip(picture + grain, 0, 255).astype(np.uint8))


def luminance(image: Image.Image, block: int = 1) -> np.ndarray:
    grey = image.convert("L")
    if block > 1:
        grey = grey.resize((grey.width // block, grey.height // block), Image.Resampling.BOX)
    return np.asarray(grey, dtype=np.float64)


def edge_map(image: Image.Image, block: int = 4) -> np.ndarray:
    """Where the outlines are, at a scale where a brush or pixel filter does not hide them."""
    gy, gx = np.gradient(luminance(image, block))
    return np.hypot(gx, gy)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def layout_agreement(a: Image.Image, b: Image.Image) -> float:
    """Rank correlation of 16x16 brightness maps: 1 when light and dark sit in the same places."""

    def ranks(image: Image.Image) -> np.ndarray:
        return np.argsort(np.argsort(luminance(image, SIZE // 16).ravel())).astype(np.float64)

    return correlation(ranks(a), ranks(b))


def img2img(prompt: str, source: Image.Image, strength: float, **fields: Any) -> Image.Image:
    return run(prompt, Operation.IMG2IMG, sources=(source,), strength=strength, **fields).images[0].image


@pytest.mark.parametrize(
    "prompt",
    ["at night", "sunset over the sea, watercolor", FOX_AT_NIGHT, "pixel art", "in the fog, pink"],
)
def test_img2img_keeps_the_composition_even_at_full_strength(prompt: str) -> None:
    for source in (render("a fox in a forest with mountains at noon"), daytime_upload()):
        restyled = img2img(prompt, source, 1.0)
        assert mean_difference(restyled, source) > 3, "strength 1 is a visible restyle"
        assert layout_agreement(restyled, source) > 0.9, "light and dark stay where they were"
        assert correlation(edge_map(restyled), edge_map(source)) > 0.5, "the outlines stay"


@pytest.mark.parametrize("prompt", ["at night", "sunset over the sea, watercolor", FOX_AT_NIGHT, "pixel art"])
def test_img2img_is_not_a_cross_fade_with_a_fresh_drawing(prompt: str) -> None:
    source = render("a fox in a forest with mountains at noon")
    restyled = img2img(prompt, source, 0.8)
    cross_fade = Image.blend(source, render(prompt), 0.8)
    source_edges = edge_map(source)
    assert (
        correlation(edge_map(restyled), source_edges) > correlation(edge_map(cross_fade), source_edges) + 0.2
    )
    assert layout_agreement(restyled, source) > layout_agreement(cross_fade, source)


def _blueness(image: Image.Image) -> float:
    rgb = pixels(image)
    return float((rgb[..., 2] / (rgb.sum(axis=-1) + 1)).mean())


def _warmth(image: Image.Image) -> float:
    rgb = pixels(image)
    return float((rgb[..., 0] - rgb[..., 2]).mean())


def _contrast(image: Image.Image) -> float:
    return float(luminance(image).std())


def _pinkness(image: Image.Image) -> float:
    rgb = pixels(image)
    return float((rgb[..., 0] + rgb[..., 2] - 2 * rgb[..., 1]).mean())


def _saturation(image: Image.Image) -> float:
    return float(hue_degrees(image)[1].mean())


@pytest.mark.parametrize(
    ("prompt", "measure", "direction", "visible"),
    [
        ("at night", lambda image: pixels(image).mean(), -1, 60.0),  # darker (0..255) …
        ("at night", _blueness, +1, 0.1),  # … and bluer (share of blue, 0..1)
        ("at sunset", _warmth, +1, 25.0),
        ("in the fog", _contrast, -1, 10.0),
        ("pink", _pinkness, +1, 25.0),
        ("black and white", _saturation, -1, 0.3),
    ],
)
def test_img2img_moves_the_look_toward_the_prompt_step_by_step_with_strength(
    prompt: str, measure: Any, direction: int, visible: float
) -> None:
    source = daytime_upload()
    strengths = (0.0, 0.25, 0.5, 0.75, 1.0)
    results = [img2img(prompt, source, strength) for strength in strengths]
    assert png_bytes(results[0]) == png_bytes(source), "strength 0 is the source itself"
    values = [direction * measure(image) for image in results]
    steps = np.diff(values)
    assert (steps > 0).all(), f"{prompt!r}: {values} should move one way as strength grows"
    assert values[-1] - values[0] > visible, f"{prompt!r}: {values} should change clearly by strength 1"


def test_img2img_at_night_turns_a_daytime_upload_dark_and_blue_with_everything_in_place() -> None:
    source = daytime_upload()
    night = img2img("at night", source, 1.0)
    before, after = pixels(source), pixels(night)
    assert after.mean() < 0.5 * before.mean()
    assert after[..., 2].mean() > after[..., 0].mean(), "blue over red"
    sun_y, sun_x = np.unravel_index(np.argmax(luminance(night, 4)), luminance(night, 4).shape)
    assert abs(sun_x * 4 - SIZE * 3 // 4) < SIZE // 12 and abs(sun_y * 4 - SIZE // 5) < SIZE // 12
    house = (slice(SIZE // 2, SIZE * 5 // 8), slice(SIZE // 6, SIZE // 4))
    field = (slice(SIZE * 7 // 8, SIZE), slice(SIZE // 2, SIZE))
    assert after[house][..., 0].mean() > after[field][..., 0].mean(), "the red house is still the red part"


@pytest.mark.parametrize(("prompt", "channel"), [("a dense forest", 1), ("the open sea", 2)])
def test_img2img_takes_the_colours_of_named_scenery_but_not_its_shapes(prompt: str, channel: int) -> None:
    """ "a forest" turns an upload greener, "the sea" bluer; no tree or wave is drawn into it."""
    source = daytime_upload()
    restyled = img2img(prompt, source, 1.0)

    def share(image: Image.Image) -> float:
        rgb = pixels(image)
        return float((rgb[..., channel] / (rgb.sum(axis=-1) + 1)).mean())

    assert share(restyled) > share(source) + 0.015
    change = np.abs(luminance(restyled) - luminance(source))
    assert change.mean() < 1.5 and change.max() <= 8, "light and shadow stay (up to rounding and clipping)"
    assert layout_agreement(restyled, source) > 0.95


def test_img2img_is_deterministic_and_a_prompt_without_look_words_changes_nothing() -> None:
    source = daytime_upload()
    first = img2img("sunset, watercolor", source, 0.7, seed=9)
    assert png_bytes(first) == png_bytes(img2img("sunset, watercolor", source, 0.7, seed=9))
    plain = run("a fox", Operation.IMG2IMG, sources=(source,), strength=0.9)
    assert png_bytes(plain.images[0].image) == png_bytes(source)
    assert any("names none of them, so the image is unchanged" in note for note in plain.notes)


def test_edit_adding_snow_is_visible_and_keeps_the_layout() -> None:
    before_prompt = "a fox in a forest at noon"
    source = render(before_prompt, seed=4)
    edited = run(f"{before_prompt} with snow", Operation.EDIT, sources=(source,), seed=4).images[0].image
    ground_before = pixels(source)[int(SIZE * 0.94) :].mean()
    ground_after = pixels(edited)[int(SIZE * 0.94) :].mean()
    assert ground_after > ground_before + 30, "snow should whiten the ground"
    unrelated_layout = render(f"{before_prompt} with snow", seed=99)
    assert mean_difference(edited, source) < mean_difference(unrelated_layout, source)


def test_variation_keeps_the_scene_but_changes_the_layout() -> None:
    source = render(FOX_AT_NIGHT, seed=1)
    variation = run(FOX_AT_NIGHT, Operation.VARIATION, sources=(source,), seed=1).images[0].image
    assert mean_difference(variation, source) > 5, "even with the same seed the layout must change"
    out = pixels(variation)
    assert out.mean() < 100, "still a night scene"
    red = (out[..., 0] > 90) & (out[..., 0] > 2 * out[..., 1]) & (out[..., 0] > 2 * out[..., 2])
    assert red.mean() > 0.003, "still a red fox"
    again = run(FOX_AT_NIGHT, Operation.VARIATION, sources=(source,), seed=1).images[0].image
    assert png_bytes(again) == png_bytes(variation)


def test_variation_without_a_prompt_reworks_the_source() -> None:
    source = render(SEA_SUNSET)
    result = run("", Operation.VARIATION, sources=(source,), seed=3)
    variation = result.images[0].image
    assert variation.size == source.size
    assert 3 < mean_difference(variation, source) < 80
    assert (
        mean_difference(variation, run("", Operation.VARIATION, sources=(source,), seed=4).images[0].image)
        > 1
    )


# Variations are siblings of their source, not cross-fades with another drawing; edits keep the layout

NIGHT_CABIN = "a cozy cabin at night, heavy snowfall"


def regions(mask: np.ndarray) -> list[np.ndarray]:
    """The connected regions (4-neighbour) of a boolean mask, each as an array of (row, column)."""
    todo = mask.copy()
    height, width = mask.shape
    found = []
    for row, col in zip(*np.nonzero(todo), strict=True):
        if not todo[row, col]:
            continue
        todo[row, col] = False
        stack, points = [(row, col)], []
        while stack:
            y, x = stack.pop()
            points.append((y, x))
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < height and 0 <= nx < width and todo[ny, nx]:
                    todo[ny, nx] = False
                    stack.append((ny, nx))
        found.append(np.array(points))
    return found


def moons(image: Image.Image) -> list[tuple[float, np.ndarray]]:
    """Moon-like discs as (mean brightness, centre): regions of the sky clearly brighter than the
    sky around them and at least a third of a moon's size (stars and snowflakes are far smaller).

    A cross-fade of two layouts shows two such discs, each only about half as bright as a moon.
    """
    sky = luminance(image)[: int(image.height * 0.45)]
    moon_area = np.pi * (0.045 * min(image.size)) ** 2
    bright = sky > np.median(sky) + 60
    return [
        (float(sky[tuple(points.T)].mean()), points.mean(axis=0))
        for points in regions(bright)
        if len(points) >= moon_area / 3
    ]


def lit_windows(image: Image.Image) -> list[int]:
    """Sizes of the warm yellow window panes: a cabin at night has exactly two, crisp."""
    rgb = pixels(image)
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    warm = (red > 150) & (red > 1.5 * blue) & (green > 1.2 * blue)  # lamplight, even "low-key"
    return [len(points) for points in regions(warm) if len(points) >= 6]


def red_blocks(image: Image.Image) -> list[int]:
    rgb = pixels(image)
    red = (rgb[..., 0] > 150) & (rgb[..., 0] > 2.5 * rgb[..., 1]) & (rgb[..., 0] > 2.5 * rgb[..., 2])
    return [len(points) for points in regions(red) if len(points) > 30]


def variations(source: Image.Image, prompt: str = NIGHT_CABIN, **fields: Any) -> list[Image.Image]:
    fields.setdefault("seed", 500)
    fields.setdefault("n", 3)
    fields.setdefault("strength", 0.5)  # what the assistant asks for
    return [image.image for image in run(prompt, Operation.VARIATION, sources=(source,), **fields).images]


def stored(result: ImageResult, prompt: str, operation: Operation, index: int = 0) -> Image.Image:
    """An image of a result as the app stores and loads it: a PNG file with Atelier's metadata."""
    from storage.models import Image as ImageRow
    from storage.pngmeta import encode_png
    from storage.repository import image_infotext, image_lineage_chunk

    made = result.images[index]
    row = ImageRow(
        id=1,
        conversation_id=1,
        number=1,
        operation=operation.value,
        prompt=prompt,
        negative_prompt="",
        revised_prompt=made.revised_prompt,
        backend=result.backend,
        model=result.model,
        seed=made.seed,
        width=made.image.width,
        height=made.image.height,
        params=result.params,
    )
    data = encode_png(made.image, image_infotext(row), image_lineage_chunk(row))
    with Image.open(io.BytesIO(data)) as opened:
        opened.load()
        return opened.copy()


def test_variations_of_a_night_scene_have_one_crisp_moon_and_one_cabin() -> None:
    """The QA bug: each variation showed two half-transparent moons and two ghosted cabins."""
    for seed in (1, 2, 3):
        source = render(NIGHT_CABIN, seed=seed)
        ((source_moon, _),) = moons(source)
        assert len(lit_windows(source)) == 2
        for variation in variations(source, seed=seed + 100):
            found = moons(variation)
            assert len(found) == 1, f"one moon, not {len(found)}"
            assert found[0][0] > source_moon - 10, "the moon is as bright as the source's, not see-through"
            windows = lit_windows(variation)
            assert len(windows) == 2, f"one cabin with its two lit windows, not {windows}"
            # the moon check does catch a cross-fade of two layouts: half this, half the source
            ghost_moons = moons(Image.blend(source, variation, 0.5))
            assert len(ghost_moons) != 1 or ghost_moons[0][0] < source_moon - 10


def test_a_variation_is_a_sibling_of_its_source() -> None:
    source = render(NIGHT_CABIN, seed=3)
    ((_, moon_at),) = moons(source)
    another_seed = render(NIGHT_CABIN, seed=53)
    unrelated = render(GREEN_FOREST, seed=3)
    found = variations(source, seed=103)
    for variation in found:
        assert 3 < mean_difference(variation, source) < mean_difference(another_seed, source)
        assert mean_difference(variation, source) < mean_difference(unrelated, source)
        assert layout_agreement(variation, source) > layout_agreement(another_seed, source) + 0.1
        ((_, moved_to),) = moons(variation)
        assert np.abs(moved_to - moon_at).max() < SIZE / 4, "the moon moves a little, not anywhere"
        assert pixels(variation).mean() < 110, "still night"
    # every seed its own, visibly: the moon, the cabin, the snowflakes and stars differ
    for first, second in ((0, 1), (1, 2), (0, 2)):
        changed = np.abs(pixels(found[first]) - pixels(found[second])).max(axis=-1) > 30
        assert changed.mean() > 0.03
    # ... and the same seed again is the same picture, byte for byte
    again = variations(source, seed=103)
    assert [png_bytes(image) for image in again] == [png_bytes(image) for image in found]


def test_variation_strength_sets_how_far_things_move() -> None:
    source = render(NIGHT_CABIN, seed=2)
    ((_, moon_at),) = moons(source)

    def moon_shift(strength: float) -> float:
        shifts = []
        for variation in variations(source, strength=strength, n=4):
            ((_, moved_to),) = moons(variation)
            shifts.append(np.abs(moved_to - moon_at).max())
        return float(np.mean(shifts))

    assert moon_shift(0.0) < 1.0, "strength 0 keeps every placement"
    assert 1.0 < moon_shift(0.35) < moon_shift(0.75)


def test_a_variation_of_a_stored_drawing_is_the_same_as_of_the_drawing_in_memory() -> None:
    """The app hands the backend the PNG from disk: its metadata must say the same as the object."""
    result = run(NIGHT_CABIN, seed=7)
    from_disk = stored(result, NIGHT_CABIN, Operation.GENERATE)
    in_memory = variations(result.images[0].image)
    assert [png_bytes(image) for image in variations(from_disk)] == [png_bytes(i) for i in in_memory]

    # a variation of a stored variation is a sibling of it, just as crisp (its layout is recorded)
    first = run(NIGHT_CABIN, Operation.VARIATION, sources=(from_disk,), seed=500, strength=0.5)
    revised = first.images[0].revised_prompt or ""
    assert "layout of seed 7, varied by seed 500" in revised
    parent = stored(first, NIGHT_CABIN, Operation.VARIATION)
    ((_, moon_at),) = moons(parent)
    for grandchild in variations(parent, seed=900):
        ((brightness, moved_to),) = moons(grandchild)
        assert brightness > 220 and np.abs(moved_to - moon_at).max() < SIZE / 4
        assert len(lit_windows(grandchild)) == 2
        assert mean_difference(grandchild, parent) < mean_difference(render(NIGHT_CABIN, seed=53), parent)


def test_the_qa_conversation_gives_sibling_variations(tmp_path: Path) -> None:
    """Through the app, as QA did: a cabin, "make it snowier", three more like the second one."""
    from assistant.core import Assistant
    from assistant.runtime import open_repository
    from assistant.settings import Settings

    settings = Settings(data_dir=tmp_path, backend="offline", width=SIZE, height=SIZE, steps=4, seed=11)
    assistant = Assistant(settings, open_repository(settings))
    events = list(assistant.respond(None, "a cozy cabin at night", ()))
    conversation_id = events[0].conversation_id  # type: ignore[attr-defined]
    for words in ("make it snowier", "three more like the second one"):
        list(assistant.respond(conversation_id, words, ()))
    rows = assistant.repo.conversation_images(conversation_id)
    assert [row.operation for row in rows] == ["generate", "edit", "variation", "variation", "variation"]
    snowy = assistant.repo.load_image(rows[1])
    ((moon, moon_at),) = moons(snowy)
    for row in rows[2:]:
        variation = assistant.repo.load_image(row)
        ((brightness, moved_to),) = moons(variation)
        assert brightness > moon - 10 and 0 < np.abs(moved_to - moon_at).max() < SIZE / 4
        assert len(lit_windows(variation)) == 2
    assembled = [png_bytes(assistant.repo.load_image(row)) for row in rows[2:]]
    assert len(set(assembled)) == 3


def test_a_changed_drawing_is_not_taken_for_the_one_it_claims_to_be() -> None:
    """A mirrored copy keeps the original's metadata; redrawing it would put the moon back."""
    source = render(NIGHT_CABIN, seed=3)
    mirrored = ImageOps.mirror(source)
    assert mirrored.info, "Pillow copies the metadata along"
    result = run(NIGHT_CABIN, Operation.VARIATION, sources=(mirrored,), seed=5, strength=0.5)
    assert any("reframes and recolours" in note for note in result.notes)
    assert len(moons(result.images[0].image)) == 1


def test_a_variation_of_an_upload_reworks_its_own_pixels_without_ghosts() -> None:
    upload = daytime_upload()
    (house,) = red_blocks(upload)
    result = run("a red house on a green field on a sunny day", Operation.VARIATION, sources=(upload,), n=3)
    assert any("reframes and recolours" in note for note in result.notes)
    for made in result.images:
        (varied,) = red_blocks(made.image)  # one red house, as red as before, not a faded double
        assert varied > 0.9 * house
        assert 3 < mean_difference(made.image, upload) < 80


def test_an_edit_of_a_variation_keeps_its_layout() -> None:
    """ "make it snowier" of a variation: the same moon and cabin where they were, more snow."""
    source = render("a cozy cabin at night", seed=3)
    variation_result = run(
        "a cozy cabin at night", Operation.VARIATION, sources=(source,), seed=77, strength=0.5
    )
    variation = stored(variation_result, "a cozy cabin at night", Operation.VARIATION)
    ((_, moon_at),) = moons(variation)
    # the app keeps the source's seed for an edit
    edited = run(NIGHT_CABIN, Operation.EDIT, sources=(variation,), seed=77).images[0].image
    ((brightness, moved_to),) = moons(edited)
    assert brightness > 220 and np.abs(moved_to - moon_at).max() < 1.0
    assert len(lit_windows(edited)) == 2
    ground_before = pixels(variation)[int(SIZE * 0.94) :].mean()
    assert pixels(edited)[int(SIZE * 0.94) :].mean() > ground_before + 30, "snow whitens the ground"
    assert layout_agreement(edited, variation) > 0.6


def test_an_edit_of_an_upload_keeps_its_picture() -> None:
    """An edit cannot redraw an upload; cross-fading a drawing over it ghosted both."""
    upload = daytime_upload()
    for prompt in ("a red house on a field at night, snowy", "a fox in a meadow at sunset"):
        result = run(prompt, Operation.EDIT, sources=(upload,))
        edited = result.images[0].image
        assert mean_difference(edited, upload) > 3
        assert layout_agreement(edited, upload) > 0.9
        assert correlation(edge_map(edited), edge_map(upload)) > 0.5
        assert any("cannot add or move things" in note for note in result.notes)

    def specks(image: Image.Image) -> int:
        """Small spots clearly brighter than what is around them (snowflakes)."""
        around = luminance(image.filter(ImageFilter.BoxBlur(3)))
        return len(regions(luminance(image) - around > 40))

    snowy = run("a red house on a field at night, snowy", Operation.EDIT, sources=(upload,)).images[0].image
    dry = run("a red house on a field at night", Operation.EDIT, sources=(upload,)).images[0].image
    assert specks(snowy) > specks(dry) + 50, "falling snow is drawn over the picture, crisp"


def test_source_operations_keep_the_source_size() -> None:
    source = render(GREEN_FOREST, width=160, height=96)
    result = run(FOX_AT_NIGHT, Operation.IMG2IMG, sources=(source,), width=512, height=512)
    assert result.images[0].image.size == (160, 96)
    assert result.params["size"] == "160x96"


# --------------------------------------------------------------------------------------------
# Progress, cancel, metadata, validation


def test_progress_counts_every_step_of_every_image() -> None:
    calls: list[tuple[int, int]] = []
    OfflineBackend().run(
        ImageRequest(Operation.GENERATE, GREEN_FOREST, width=96, height=96, steps=5, n=2, seed=1),
        progress=lambda step, total: calls.append((step, total)),
    )
    assert calls == [(step, 10) for step in range(1, 11)]


def test_cancel_stops_between_steps() -> None:
    token = CancelToken()
    calls: list[int] = []

    def on_progress(step: int, total: int) -> None:
        calls.append(step)
        if step == 3:
            token.cancel()

    with pytest.raises(Cancelled):
        OfflineBackend().run(
            ImageRequest(Operation.GENERATE, GREEN_FOREST, width=96, height=96, steps=8), on_progress, token
        )
    assert calls == [1, 2, 3]


def test_a_stop_part_way_through_a_batch_hands_back_the_images_already_drawn() -> None:
    token = CancelToken()

    def stop_in_the_third(step: int, total: int) -> None:
        if step == 2 * 4 + 1:  # the first step of the third image
            token.cancel()

    request = ImageRequest(Operation.GENERATE, GREEN_FOREST, width=96, height=96, steps=4, n=4, seed=7)
    with pytest.raises(Cancelled) as stopped:
        OfflineBackend().run(request, stop_in_the_third, token)
    finished = stopped.value.finished
    assert finished is not None
    whole = OfflineBackend().run(request)
    assert [g.seed for g in finished.images] == [g.seed for g in whole.images][:2]
    assert finished.params["seeds"] == [g.seed for g in finished.images]
    for kept, full in zip(finished.images, whole.images, strict=False):
        assert kept.image.tobytes() == full.image.tobytes()  # the same pixels a full run draws


def test_a_stop_in_the_first_image_hands_back_nothing() -> None:
    token = CancelToken()

    def stop_at_two(step: int, total: int) -> None:
        if step == 2:
            token.cancel()

    request = ImageRequest(Operation.GENERATE, GREEN_FOREST, width=96, height=96, steps=4, n=3)
    with pytest.raises(Cancelled) as stopped:
        OfflineBackend().run(request, stop_at_two, token)
    assert stopped.value.finished is None


def test_cancel_before_start_draws_nothing() -> None:
    token = CancelToken()
    token.cancel()
    calls: list[int] = []
    with pytest.raises(Cancelled):
        OfflineBackend().run(
            ImageRequest(Operation.GENERATE, GREEN_FOREST, width=96, height=96),
            lambda step, total: calls.append(step),
            token,
        )
    assert calls == []


def test_result_metadata_is_honest() -> None:
    result = run(SEA_SUNSET, seed=7, steps=6)
    assert isinstance(OfflineBackend(), ImageBackend)
    assert (result.backend, result.model) == ("offline", "atelier-sketch-v1")
    assert result.params["renderer"] == RENDERER == "offline sketch renderer (not a neural model)"
    assert result.params["steps"] == 6
    assert result.params["seed"] == 7
    assert result.params["size"] == f"{SIZE}x{SIZE}"
    assert result.params["style"] == "watercolor"
    assert any("not a neural model" in note for note in result.notes)
    revised = result.images[0].revised_prompt
    assert revised is not None and "sunset" in revised and "sea" in revised


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"width": 32}, "64 to 2048 px wide"),
        ({"height": 4096}, "64 to 2048 px tall"),
        ({"n": 0}, "1 to 8 images"),
        ({"steps": 0}, "Steps must be between 1 and 100"),
    ],
)
def test_bad_generate_requests_fail_before_drawing(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        run(GREEN_FOREST, **fields)


def test_other_bad_requests_have_specific_messages() -> None:
    source = render(GREEN_FOREST, width=96, height=96)
    with pytest.raises(InvalidRequest, match="prompt is empty"):
        run("   ")
    with pytest.raises(InvalidRequest, match="needs a source image"):
        run(FOX_AT_NIGHT, Operation.EDIT)
    with pytest.raises(InvalidRequest, match="Strength must be between 0 and 1"):
        run(FOX_AT_NIGHT, Operation.IMG2IMG, sources=(source,), strength=1.5)
    with pytest.raises(InvalidRequest, match="source image is 40x96"):
        run(FOX_AT_NIGHT, Operation.IMG2IMG, sources=(source.crop((0, 0, 40, 96)),))
    with pytest.raises(UnsupportedOperation, match="cannot upscale"):
        run(GREEN_FOREST, Operation.UPSCALE)


# --------------------------------------------------------------------------------------------
# Every image is checked where it enters the backend


def test_source_in_another_mode_is_converted_with_a_note() -> None:
    deep = Image.fromarray(np.arange(SIZE * SIZE, dtype=np.uint16).reshape(SIZE, SIZE))  # 16-bit grey
    assert deep.mode.startswith("I;16")
    result = run("at night", Operation.IMG2IMG, sources=(deep,))
    assert result.images[0].image.mode == "RGB" and result.images[0].image.size == (SIZE, SIZE)
    assert any("8-bit" in note for note in result.notes)

    cmyk = render(GREEN_FOREST).convert("CMYK")
    result = run(FOX_AT_NIGHT, Operation.EDIT, sources=(cmyk,))
    assert any("CMYK" in note for note in result.notes)
    palette = run(FOX_AT_NIGHT, Operation.VARIATION, sources=(render(GREEN_FOREST).convert("P"),))
    assert palette.images[0].image.mode == "RGB"


def test_a_source_that_is_not_an_image_is_refused() -> None:
    with pytest.raises(InvalidImage, match=r"The source image is not an image \(it is a bytes\)"):
        run(FOX_AT_NIGHT, Operation.IMG2IMG, sources=(b"\x89PNG...",))  # type: ignore[arg-type]


def test_a_source_over_the_pixel_limit_is_refused_before_drawing() -> None:
    huge = Image.new("1", (8000, 5001))  # 40 megapixels at one bit each: cheap to make, too big to use
    with pytest.raises(InvalidImage, match="40 megapixels are accepted"):
        run(FOX_AT_NIGHT, Operation.IMG2IMG, sources=(huge,))


def test_a_damaged_source_file_is_an_invalid_image_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "cut.png"
    path.write_bytes(png_bytes(render(GREEN_FOREST))[:3000])
    # opened, not decoded: the damage shows only on load
    with Image.open(path) as lazy, pytest.raises(InvalidImage, match="truncated or damaged"):
        run(FOX_AT_NIGHT, Operation.IMG2IMG, sources=(lazy,))


@pytest.mark.parametrize(
    ("mask", "message"),
    [
        (Image.new("L", (SIZE, SIZE // 2), 255), "shapes differ too much"),
        (Image.new("L", (SIZE, SIZE), 0), "The mask is empty"),
        (Image.new("1", (8000, 5001), 1), "The mask is 8000x5001"),
        (42, r"The mask is not an image \(it is a int\)"),
    ],
)
def test_bad_masks_are_refused_before_drawing(mask: Any, message: str) -> None:
    with pytest.raises(InvalidImage, match=message):
        run(FOX_AT_NIGHT, Operation.INPAINT, sources=(render(GREEN_FOREST),), mask=mask)


def test_unknown_words_give_a_default_landscape_with_a_note() -> None:
    result = run("zxqv blorp")
    assert result.images[0].image.size == (SIZE, SIZE)
    assert any("default landscape" in note for note in result.notes)


def test_a_coloured_thing_the_sketch_cannot_draw_is_named_not_tinted_over_everything() -> None:
    """ "a cabin with a red door" used to tint the whole picture red; "a red barn" drew no barn
    and said nothing. The colour now stays off the picture and the note names the thing."""
    plain, with_door = (
        run(p, seed=5) for p in ("a cabin in a forest", "a cabin in a forest with a red door")
    )
    assert np.array_equal(np.asarray(plain.images[0].image), np.asarray(with_door.images[0].image))
    assert any("no drawing for “red door”" in note for note in with_door.notes)
    barn = run("a red barn in a field", seed=5)
    assert any("“red barn”" in note for note in barn.notes)
    assert parse_scene("a sunset in pink tones").palette == ("pink",)  # a tint said as one still tints
    lighthouse = run("a lighthouse on a cliff at sunset", seed=5)  # things it cannot draw are named
    assert any(
        "no drawing for “lighthouse”, “cliff”, so they are left out" in note for note in lighthouse.notes
    )
    assert parse_scene("a cozy cabin in the woods, wide shot, seen from farther away").not_drawn == ()
    assert parse_scene("a red fox").subjects[0].colour_name == "red"


def test_the_words_atelier_adds_are_never_named_as_things_it_could_not_draw() -> None:
    """ "a lighthouse on a cliff, detailed environment, …": the phrase "a cliff" ends at the
    comma, so the note named "environment" (a craft word Atelier adds) instead of the cliff."""
    scene = parse_scene(
        "a lighthouse on a cliff, detailed environment, wide establishing view, layered foreground and "
        "background, soft natural lighting, highly detailed, sharp focus, high quality"
    )
    assert scene.not_drawn == ("lighthouse", "cliff")
