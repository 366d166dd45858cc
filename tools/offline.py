"""The built-in offline backend: draws a sketch of the prompt with numpy and Pillow.

It exists so a fresh install works end to end with no key, no GPU and no download, and it is
honest about being a sketch renderer, not a model. What it draws must still follow the prompt
in ways a person can check at a glance (a red fox is red, night is dark, snow is white), and
edits and variations must change the picture visibly and deterministically.

How it works: `offline_scene.parse_scene` turns the prompt into a `Scene`; `_Painter` draws the
scene layer by layer (sky, sun/moon/stars, far things, ground or water, mid and near things,
figures, weather, texture, style). Each layer draws from its own random generator seeded by
(seed, layer name), so adding snow to a prompt does not move the mountains, while another seed
moves everything. The layers are spread over the requested number of "steps" so progress and
cancel behave like a diffusion backend's.

Variations and edits never cross-fade two different drawings (that showed two half-transparent
moons and a ghost of every cabin). A picture this renderer drew says how (its prompt, seed and
`_Layout`, in memory and through a stored PNG's `parameters` chunk and revised prompt), and the
claim counts only if drawing it again gives the same pixels (`_recognise`). A variation of such a
picture is a sibling: the same scene on the source's layout with every placement nudged a little by
the variation's seed (more with more strength), and new stars, clouds and snowflakes; one moon,
one cabin, crisp. An edit of one draws the new prompt on exactly the source's layout. Anything else
(an upload, a picture changed since) is varied by reframing and recolouring its own pixels, and
edited as a restyle (below) with any falling snow or rain drawn over it.

img2img is a restyle, not a cross-fade with a fresh drawing: `_Restyler` keeps every edge and the
light-and-dark layout of the source and changes only its look, using the renderer's own tables for
the prompt's scenery (the colours of a forest, the sea, a city, taken from a drawing of just that
scenery), time of day (light level, colour cast, a grade toward that time's sky colours), weather
(fog haze, rain gloom, snow chill), colour words, mood words and style filter. `strength` moves
the result from the source (0) to the full restyle (1); a daytime photo "at night" turns dark and
blue with every shape where it was. A restyle cannot add a fox; a prompt with nothing it can
change leaves the image as it is, and says so in a note.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps

from tools.base import (
    Cancelled,
    CancelToken,
    GeneratedImage,
    ImageRequest,
    ImageResult,
    InvalidRequest,
    Operation,
    ProgressCallback,
    check_capability,
    derive_seeds,
)
from tools.image_input import check_sources, prepare_mask
from tools.offline_scene import COLOURS, RGB, Scene, Style, Subject, parse_scene

NAME = "offline"
MODEL = "atelier-sketch-v1"
RENDERER = "offline sketch renderer (not a neural model)"
HONEST_NOTE = (
    "Drawn by Atelier's built-in offline sketch renderer, not a neural model: it draws the "
    "prompt's keywords (colours, time of day, weather, scenery, animals, people, style). "
    "Connect an OpenAI key or a local diffusers model for real images."
)
MIN_SIDE = 64
MAX_SIDE = 2048
MAX_IMAGES = 8
MAX_STEPS = 100
DEFAULT_STEPS = 8
#: img2img, an inpaint and an edit of a picture it did not draw: how far the result moves from the
#: source (0) towards the new drawing or restyle (1). A variation: how far its layout moves.
DEFAULT_STRENGTH: dict[Operation, float] = {
    Operation.EDIT: 0.7,
    Operation.IMG2IMG: 0.6,
    Operation.VARIATION: 0.75,
    Operation.INPAINT: 1.0,
}
_NEEDS_PROMPT = frozenset({Operation.GENERATE, Operation.EDIT, Operation.IMG2IMG})
_NEEDS_SOURCE = frozenset({Operation.EDIT, Operation.INPAINT, Operation.VARIATION, Operation.IMG2IMG})
_LANDSCAPE = frozenset(
    {"mountains", "hills", "forest", "trees", "city", "sea", "lake", "house", "cabin", "road", "flowers"}
)
#: How far img2img grades the source toward the time of day's sky colours (dark parts toward the
#: top of that sky, light parts toward its horizon); day has no grade, so "at noon" changes nothing.
_GRADE: dict[str, float] = {"dawn": 0.35, "morning": 0.1, "day": 0.0, "sunset": 0.4, "night": 0.55}
#: Whole-picture weather casts for img2img: (colour, amount, desaturation).
_WEATHER_CASTS: dict[str, tuple[RGB, float, float]] = {
    "fog": ((200, 203, 208), 0.45, 0.3),
    "rain": ((105, 110, 120), 0.3, 0.35),
    "snow": ((222, 228, 240), 0.25, 0.2),
}
#: How strongly img2img recolours toward a colour word: free-standing ("in pink") or bound to a thing.
_PALETTE_TINT = 0.45
_BOUND_TINT = 0.2
#: Rec. 601 luma weights, the brightness every restyle step keeps or scales.
_LUMA = np.array((0.299, 0.587, 0.114), dtype=np.float32)
#: How far img2img moves the source's average colour toward that of the prompt's scenery.
_SCENERY_PULL = 0.7

Array = np.ndarray


# --------------------------------------------------------------------------------------------
# Light and colour


@dataclass(frozen=True)
class _Light:
    """How the time of day changes every colour drawn: overall brightness plus a colour cast."""

    brightness: float
    tint: RGB
    tint_amount: float

    def shade(self, colour: RGB, *, floor: float = 0.0, tint_scale: float = 1.0) -> RGB:
        level = max(self.brightness, floor)
        amount = self.tint_amount * tint_scale
        r, g, b = (level * ((1 - amount) * c + amount * t) for c, t in zip(colour, self.tint, strict=True))
        return (_byte(r), _byte(g), _byte(b))


_LIGHTS: dict[str, _Light] = {
    "dawn": _Light(0.8, (255, 170, 190), 0.18),
    "morning": _Light(0.95, (255, 230, 190), 0.08),
    "day": _Light(1.0, (255, 255, 255), 0.0),
    "sunset": _Light(0.78, (255, 140, 60), 0.25),
    "night": _Light(0.42, (40, 60, 130), 0.3),
}

#: Sky gradients as (position from top 0 to horizon 1, colour) stops.
_SKIES: dict[str, list[tuple[float, RGB]]] = {
    "dawn": [(0.0, (60, 70, 140)), (0.55, (190, 130, 170)), (1.0, (255, 195, 150))],
    "morning": [(0.0, (100, 155, 225)), (1.0, (225, 230, 215))],
    "day": [(0.0, (55, 125, 220)), (1.0, (175, 212, 245))],
    "sunset": [(0.0, (90, 50, 110)), (0.35, (205, 90, 90)), (0.75, (250, 150, 70)), (1.0, (255, 200, 115))],
    "night": [(0.0, (5, 8, 25)), (1.0, (28, 38, 75))],
}

_GRASS: RGB = (95, 155, 70)
_SNOW: RGB = (235, 238, 245)
_SAND: RGB = (215, 195, 150)
_PAVEMENT: RGB = (105, 105, 112)
_WATER: RGB = (25, 75, 150)
_MOUNTAIN: RGB = (105, 115, 140)
_CONIFER: RGB = (40, 105, 55)
_CANOPY: RGB = (70, 135, 60)
_TRUNK: RGB = (95, 65, 40)
_BUILDING: RGB = (70, 76, 92)
_LIT_WINDOW: RGB = (255, 215, 120)
_DAY_WINDOW: RGB = (160, 190, 215)
_FLOWER_COLOURS: tuple[RGB, ...] = (
    (230, 60, 80),
    (250, 200, 50),
    (240, 130, 180),
    (150, 90, 200),
    (250, 250, 250),
)
#: Subject colours when the prompt names none.
_SUBJECT_DEFAULTS: dict[str, RGB] = {
    "fox": (215, 105, 40),
    "wolf": (120, 120, 125),
    "cat": (90, 90, 95),
    "dog": (150, 100, 55),
    "horse": (120, 75, 45),
    "deer": (170, 120, 75),
    "rabbit": (165, 150, 135),
    "bear": (85, 60, 40),
    "bird": (60, 60, 70),
    "person": (60, 85, 140),
    "man": (60, 85, 140),
    "woman": (150, 60, 90),
    "child": (220, 150, 40),
}
#: Figure heights as a fraction of the picture height (a bird: its wingspan over the width).
_SUBJECT_HEIGHTS: dict[str, float] = {
    "fox": 0.26,
    "wolf": 0.3,
    "cat": 0.22,
    "dog": 0.26,
    "horse": 0.42,
    "deer": 0.42,
    "rabbit": 0.17,
    "bear": 0.36,
    "bird": 0.2,
    "person": 0.48,
    "man": 0.48,
    "woman": 0.46,
    "child": 0.32,
}


def _byte(value: float) -> int:
    return max(0, min(255, round(value)))


def _mix(a: RGB, b: RGB, amount: float) -> RGB:
    r, g, bl = ((1 - amount) * x + amount * y for x, y in zip(a, b, strict=True))
    return (_byte(r), _byte(g), _byte(bl))


def _scaled(colour: RGB, factor: float) -> RGB:
    return (_byte(colour[0] * factor), _byte(colour[1] * factor), _byte(colour[2] * factor))


def _to_array(image: Image.Image) -> Array:
    return np.asarray(image.convert("RGB"), dtype=np.float32)


def _to_image(pixels: Array) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))


# --------------------------------------------------------------------------------------------
# Figures: silhouettes in unit coordinates (feet at y=0, up is negative, facing +x, height ~1)

Tone = Literal["body", "dark", "light", "eye", "skin", "accent", "hair"]


@dataclass(frozen=True)
class _Shape:
    kind: Literal["ellipse", "polygon", "line"]
    points: tuple[tuple[float, float], ...]
    tone: Tone
    width: float = 0.0


def _e(x0: float, y0: float, x1: float, y1: float, tone: Tone = "body") -> _Shape:
    return _Shape("ellipse", ((x0, y0), (x1, y1)), tone)


def _p(tone: Tone, *points: tuple[float, float]) -> _Shape:
    return _Shape("polygon", points, tone)


def _leg(x: float, top: float, width: float, tone: Tone = "dark") -> _Shape:
    return _p(tone, (x - width / 2, top), (x + width / 2, top), (x + width / 2, 0.0), (x - width / 2, 0.0))


def _fox() -> list[_Shape]:
    return [
        _p(
            "body", (-0.45, -0.5), (-0.75, -0.56), (-1.0, -0.46), (-1.1, -0.3), (-0.95, -0.24), (-0.45, -0.38)
        ),
        _e(-1.14, -0.42, -0.95, -0.24, "light"),
        *(_leg(x, -0.42, 0.07) for x in (-0.38, -0.26, 0.18, 0.3)),
        _e(-0.55, -0.68, 0.4, -0.32),
        _e(0.16, -0.6, 0.42, -0.36, "light"),
        _p("body", (0.15, -0.62), (0.38, -0.85), (0.55, -0.78), (0.4, -0.5)),
        _e(0.3, -0.95, 0.62, -0.68),
        _p("body", (0.55, -0.88), (0.84, -0.76), (0.56, -0.7)),
        _p("dark", (0.34, -0.88), (0.38, -1.06), (0.46, -0.9)),
        _p("dark", (0.46, -0.9), (0.52, -1.07), (0.57, -0.88)),
        _e(0.79, -0.8, 0.85, -0.74, "eye"),
        _e(0.5, -0.87, 0.55, -0.82, "eye"),
    ]


def _wolf() -> list[_Shape]:
    return [
        _p("body", (-0.5, -0.62), (-0.8, -0.5), (-0.95, -0.3), (-0.85, -0.28), (-0.5, -0.48)),
        *(_leg(x, -0.5, 0.08) for x in (-0.42, -0.3, 0.2, 0.32)),
        _e(-0.6, -0.78, 0.42, -0.4),
        _e(0.1, -0.72, 0.42, -0.42, "light"),
        _p("body", (0.15, -0.7), (0.4, -0.95), (0.6, -0.86), (0.42, -0.55)),
        _e(0.32, -1.02, 0.66, -0.75),
        _p("body", (0.58, -0.95), (0.92, -0.84), (0.6, -0.77)),
        _p("dark", (0.36, -0.96), (0.4, -1.14), (0.48, -0.98)),
        _p("dark", (0.48, -0.98), (0.54, -1.15), (0.6, -0.95)),
        _e(0.87, -0.88, 0.93, -0.82, "eye"),
        _e(0.53, -0.95, 0.58, -0.9, "eye"),
    ]


def _cat() -> list[_Shape]:
    return [
        _p("body", (0.15, -0.06), (0.55, -0.1), (0.68, -0.3), (0.6, -0.34), (0.5, -0.18), (0.15, -0.16)),
        _e(-0.32, -0.62, 0.3, 0.0),
        _e(-0.22, -0.92, 0.22, -0.55),
        _p("body", (-0.2, -0.8), (-0.16, -1.02), (-0.03, -0.88)),
        _p("body", (0.03, -0.88), (0.16, -1.02), (0.2, -0.8)),
        _e(-0.12, -0.8, -0.04, -0.72, "accent"),
        _e(0.04, -0.8, 0.12, -0.72, "accent"),
        _e(-0.14, -0.3, 0.14, -0.02, "light"),
    ]


def _dog() -> list[_Shape]:
    return [
        _p("body", (-0.45, -0.62), (-0.7, -0.95), (-0.6, -0.98), (-0.38, -0.68)),
        *(_leg(x, -0.45, 0.09, "body") for x in (-0.38, -0.25, 0.16, 0.28)),
        _e(-0.5, -0.72, 0.38, -0.36),
        _p("body", (0.18, -0.66), (0.34, -0.9), (0.52, -0.84), (0.38, -0.5)),
        _e(0.26, -1.0, 0.6, -0.7),
        _p("body", (0.5, -0.9), (0.8, -0.86), (0.8, -0.74), (0.5, -0.72)),
        _e(0.26, -0.96, 0.38, -0.66, "dark"),
        _e(0.75, -0.88, 0.82, -0.81, "eye"),
        _e(0.46, -0.9, 0.51, -0.85, "eye"),
    ]


def _horse() -> list[_Shape]:
    return [
        _p("dark", (-0.58, -0.72), (-0.8, -0.45), (-0.74, -0.28), (-0.6, -0.55)),
        *(_leg(x, -0.52, 0.07) for x in (-0.5, -0.38, 0.26, 0.38)),
        _e(-0.62, -0.8, 0.48, -0.42),
        _p("body", (0.25, -0.72), (0.48, -1.08), (0.64, -1.02), (0.46, -0.55)),
        _p("dark", (0.24, -0.75), (0.46, -1.1), (0.5, -1.04), (0.3, -0.7)),
        _p("body", (0.5, -1.12), (0.88, -0.86), (0.82, -0.78), (0.5, -0.94)),
        _p("body", (0.52, -1.1), (0.54, -1.2), (0.6, -1.08)),
        _e(0.62, -1.04, 0.67, -0.99, "eye"),
    ]


def _deer() -> list[_Shape]:
    antlers = [
        ((0.5, -1.02), (0.42, -1.3)),
        ((0.45, -1.18), (0.34, -1.26)),
        ((0.56, -1.02), (0.64, -1.3)),
        ((0.61, -1.18), (0.72, -1.24)),
    ]
    return [
        *(_Shape("line", segment, "accent", 0.035) for segment in antlers),
        _e(-0.55, -0.74, -0.43, -0.62, "light"),
        *(_leg(x, -0.5, 0.05) for x in (-0.38, -0.28, 0.2, 0.3)),
        _e(-0.5, -0.78, 0.38, -0.46),
        _p("body", (0.2, -0.72), (0.42, -1.02), (0.58, -0.96), (0.4, -0.55)),
        _e(0.4, -1.08, 0.66, -0.88),
        _p("body", (0.6, -1.04), (0.82, -0.94), (0.62, -0.9)),
        _e(0.54, -1.03, 0.59, -0.98, "eye"),
    ]


def _rabbit() -> list[_Shape]:
    return [
        _e(-0.52, -0.34, -0.32, -0.14, "light"),
        _e(-0.42, -0.58, 0.28, 0.0),
        _e(0.06, -0.16, 0.4, 0.0),
        _e(0.05, -0.78, 0.42, -0.46),
        _e(0.08, -1.22, 0.2, -0.68),
        _e(0.2, -1.16, 0.32, -0.66),
        _e(0.3, -0.66, 0.35, -0.61, "eye"),
    ]


def _bear() -> list[_Shape]:
    return [
        *(_leg(x, -0.45, 0.16) for x in (-0.42, -0.22, 0.18, 0.34)),
        _e(-0.62, -0.86, 0.48, -0.3),
        _e(0.28, -0.86, 0.7, -0.48),
        _e(0.28, -0.9, 0.42, -0.76),
        _e(0.5, -0.9, 0.64, -0.76),
        _e(0.54, -0.7, 0.76, -0.54, "light"),
        _e(0.7, -0.68, 0.77, -0.61, "eye"),
        _e(0.5, -0.76, 0.55, -0.71, "eye"),
    ]


def _bird() -> list[_Shape]:
    """A bird in flight; y=0 is its middle, not its feet."""
    return [
        _p("body", (-0.28, -0.03), (-0.55, -0.14), (-0.55, 0.1), (-0.28, 0.05)),
        _p("dark", (-0.12, -0.02), (-0.42, -0.5), (-0.2, -0.48), (0.12, -0.04)),
        _e(-0.32, -0.1, 0.3, 0.1),
        _e(0.2, -0.14, 0.42, 0.06),
        _p("accent", (0.4, -0.07), (0.56, -0.02), (0.4, 0.02)),
        _p("body", (-0.05, 0.0), (0.12, -0.48), (0.3, -0.44), (0.16, -0.02)),
        _e(0.31, -0.08, 0.35, -0.04, "eye"),
    ]


def _person(kind: str) -> list[_Shape]:
    shapes = [
        _leg(-0.06, -0.46, 0.09),
        _leg(0.07, -0.46, 0.09),
        _Shape("line", ((-0.13, -0.8), (-0.22, -0.46)), "body", 0.07),
        _Shape("line", ((0.13, -0.8), (0.22, -0.46)), "body", 0.07),
        _p("body", (-0.14, -0.84), (0.14, -0.84), (0.16, -0.44), (-0.16, -0.44)),
    ]
    if kind == "woman":
        shapes.insert(0, _e(-0.11, -1.02, 0.11, -0.74, "hair"))
        shapes.append(_p("body", (-0.15, -0.5), (0.15, -0.5), (0.26, -0.2), (-0.26, -0.2)))
    shapes += [_e(-0.08, -1.0, 0.08, -0.84, "skin"), _e(-0.09, -1.02, 0.09, -0.93, "hair")]
    return shapes


_SILHOUETTES: dict[str, Callable[[], list[_Shape]]] = {
    "fox": _fox,
    "wolf": _wolf,
    "cat": _cat,
    "dog": _dog,
    "horse": _horse,
    "deer": _deer,
    "rabbit": _rabbit,
    "bear": _bear,
    "bird": _bird,
}


def _silhouette(kind: str) -> list[_Shape]:
    return _SILHOUETTES[kind]() if kind in _SILHOUETTES else _person(kind)


# --------------------------------------------------------------------------------------------
# The painter


#: How far a variation moves each placement, as a share of the range it is drawn from, per unit
#: of strength: at the assistant's default 0.5 a moon drawn anywhere across 70% of the width
#: moves by about a tenth of the width; at 0 nothing moves.
_NUDGE = 0.25
#: Narrow ranges (a house's offset, the horizon's height) are nudged as if this wide, so they move
#: visibly too; the result still stays inside its own range.
_NUDGE_SPAN = 0.2
#: Longest chain of variations a drawing may record (a crafted PNG must not make us loop).
_MAX_NUDGES = 64


@dataclass(frozen=True)
class _Layout:
    """Where a drawing's things stand: the draws of one seed, each nudged by a chain of variations.

    A fresh drawing's layout is its own seed. A variation keeps its source's layout and adds
    (its seed, its strength): every placement (horizon, moon, house, figures, ridges, trees) is
    the source's, moved a little by draws from the variation's seed, so the result is a sibling
    of the source rather than another picture.
    """

    seed: int
    nudges: tuple[tuple[int, float], ...] = ()

    def varied(self, seed: int, amount: float) -> _Layout:
        return _Layout(self.seed, (*self.nudges, (seed, amount)))

    def describe(self) -> str:
        steps = "".join(f", varied by seed {seed} (strength {amount!r})" for seed, amount in self.nudges)
        return f"layout of seed {self.seed}{steps}"


class _Nudged:
    """A layer's placement draws: the source's, each moved by every variation of the chain.

    It takes exactly the draws the source's generator took, so everything after a nudged
    value stays paired with the source's own; values are folded back into their range, so a
    moon stays in the sky and a house on the ground. Choices and counts are not nudged.
    """

    def __init__(
        self,
        base: Callable[[], np.random.Generator],
        nudges: Sequence[tuple[np.random.Generator, float]],
    ) -> None:
        self.base_again = base
        self.base = base()
        self.nudges = nudges

    def uniform(self, low: float | None = None, high: float | None = None, size: int | None = None) -> Any:
        if low is None or high is None:
            # `uniform()` alone is a choice (which way a fox faces, snow on the peaks, pine or
            # oak): it stays the source's, so a variation has the same things, a little moved
            return self.base.uniform()
        value = np.asarray(self.base.uniform(low, high, size), dtype=np.float64)
        span = high - low
        if span > 0:
            for rng, amount in self.nudges:
                value = value + rng.normal(0.0, 1.0, size) * _NUDGE * amount * max(span, _NUDGE_SPAN)
            folded = np.mod((value - low) / span, 2.0)
            value = low + span * np.where(folded > 1.0, 2.0 - folded, folded)
        return float(value) if size is None else value

    def integers(self, low: int, high: int | None = None) -> int:
        return int(self.base.integers(low, high))  # how many trees stays the source's


_Draws = np.random.Generator | _Nudged


@dataclass(frozen=True)
class _Figure:
    subject: Subject
    x: float
    base_y: float
    height: float
    facing: int


class _Painter:
    """Draws one scene at one size from one seed; `stages()` lists the layers in drawing order."""

    def __init__(
        self,
        scene: Scene,
        width: int,
        height: int,
        seed: int,
        salt: str = "",
        layout: _Layout | None = None,
    ) -> None:
        self.scene = scene
        self.width = width
        self.height = height
        self.seed = seed
        self.salt = salt
        self.layout = _Layout(seed) if layout is None else layout
        #: a fresh drawing: placements and details come from one seed, as they always have
        self.plain = self.layout == _Layout(seed)
        self.unit = min(width, height) / 256  # line widths and radii scale with this
        self.elements = set(scene.elements)
        if not self.elements & _LANDSCAPE:
            self.elements.add("hills")  # an empty landscape reads as nothing; rolling hills read as "outside"
        self.snowy = "snow" in scene.weather
        light = _LIGHTS[scene.time_of_day]
        if "rain" in scene.weather:
            light = replace(light, brightness=light.brightness * 0.8)
        self.light = light

        sea_only = (
            "sea" in self.elements
            and not (self.elements & (_LANDSCAPE - {"sea"}))
            and not any(s.family != "bird" for s in scene.subjects)
        )
        placing = self._place("layout")
        self.horizon = round(height * placing.uniform(*((0.42, 0.52) if sea_only else (0.5, 0.62))))
        self.shore = height if sea_only or "sea" not in self.elements else self._lerp_ground(0.4)
        self.figures = self._place_figures(placing)
        figure_x = self.figures[0].x if self.figures else placing.uniform(0.3, 0.7) * width
        offset = placing.uniform(-0.05, 0.05) * width
        if isinstance(placing, _Nudged):
            # the house stays on the side of the picture it had in the source: its side follows the
            # first figure (or a draw near the middle), which a small nudge could push across
            source = placing.base_again()
            source.uniform(*((0.42, 0.52) if sea_only else (0.5, 0.62)))
            source_figures = self._place_figures(source)
            figure_x = source_figures[0].x if source_figures else source.uniform(0.3, 0.7) * width
        self.house_x = (0.74 if figure_x < width / 2 else 0.26) * width + offset
        self.sky_horizon_colour: RGB = _SKIES[scene.time_of_day][-1][1]
        self.light_source: tuple[float, float, float, RGB] | None = None
        self.image = Image.new("RGB", (width, height))

    # -- helpers ---------------------------------------------------------------------------

    def _rng(self, layer: str) -> np.random.Generator:
        """Details (stars, clouds, snowflakes, grain) from this drawing's own seed."""
        salt = self.salt if not self.layout.nudges else f"{self.salt}variation:"
        return np.random.default_rng([self.seed, zlib.crc32(f"{salt}{layer}".encode())])

    def _place(self, layer: str) -> _Draws:
        """Placements (horizon, moon, house, figures, ridges, trees) from the layout."""
        if self.plain:
            return self._rng(layer)
        key = [self.layout.seed, zlib.crc32(f"{self.salt}{layer}".encode())]
        if not self.layout.nudges:
            return np.random.default_rng(key)
        nudges = [
            (np.random.default_rng([seed, zlib.crc32(f"nudge:{layer}".encode())]), amount)
            for seed, amount in self.layout.nudges
        ]
        return _Nudged(lambda: np.random.default_rng(key), nudges)

    def _lerp_ground(self, fraction: float) -> int:
        """A y position `fraction` of the way from the horizon down to the bottom edge."""
        return round(self.horizon + fraction * (self.height - self.horizon))

    def _colour(self, element: str, default: RGB) -> RGB:
        colours = self.scene.colours_for(element)
        return colours[0] if colours else default

    def _pixels(self) -> Array:
        return _to_array(self.image)

    def _store(self, pixels: Array) -> None:
        self.image = _to_image(pixels)

    def _smooth_curve(self, rng: _Draws, octaves: int = 3) -> Array:
        """A gentle wave across the width in -1..1 (hills, shorelines)."""
        xs = np.linspace(0, 1, self.width)
        curve = np.zeros(self.width)
        for octave in range(octaves):
            frequency = rng.uniform(1.0, 2.5) * (octave + 1)
            curve += np.sin(2 * np.pi * (frequency * xs + rng.uniform(0, 1))) / (octave + 1)
        return np.asarray(curve / np.abs(curve).max(), dtype=np.float64)

    def _ridge(self, rng: _Draws, roughness: float = 0.55) -> Array:
        """A jagged mountain ridge across the width in 0..1, by midpoint displacement."""
        points = np.zeros(129)
        points[[0, -1]] = rng.uniform(0, 1, 2)
        step, spread = 128, 1.0
        while step > 1:
            half = step // 2
            middles = np.arange(half, 129, step)
            points[middles] = (points[middles - half] + points[middles + half]) / 2 + rng.uniform(
                -spread, spread, len(middles)
            )
            spread *= roughness
            step = half
        points = (points - points.min()) / max(float(np.ptp(points)), 1e-6)
        return np.interp(np.linspace(0, 128, self.width), np.arange(129), points)

    def _place_figures(self, rng: _Draws) -> list[_Figure]:
        anchor = {"center": 0.5, "left": 0.3, "right": 0.7}.get(self.scene.composition or "", 0.0)
        jitter = 0.04 if anchor else 0.12
        centre = (anchor or 0.5) + rng.uniform(-jitter, jitter)
        figures = []
        for index, subject in enumerate(self.scene.subjects):
            size = _SUBJECT_HEIGHTS.get(subject.kind, 0.45)
            facing = 1 if rng.uniform() < 0.5 else -1
            x = centre if index == 0 else centre + (0.27 if centre < 0.5 else -0.27)
            if subject.family == "bird":
                base_y = self.height * rng.uniform(0.2, 0.32)
                height = size * self.width
            else:
                base_y = self.height * (rng.uniform(0.86, 0.92) - 0.04 * index)
                height = size * self.height
            figures.append(_Figure(subject, x * self.width, base_y, height, facing))
        return figures

    def _clear_of_figures(self, x: float, half_width: float) -> bool:
        return all(
            abs(x - f.x) > half_width + 0.5 * f.height or f.subject.family == "bird" for f in self.figures
        )

    # -- layers ----------------------------------------------------------------------------

    def stages(self) -> list[Callable[[], None]]:
        return [
            self.paint_sky,
            self.paint_sky_lights,
            self.paint_far,
            self.paint_ground,
            self.paint_middle,
            self.paint_near,
            self.paint_figures,
            self.paint_weather,
            self.paint_texture,
            self.paint_exposure,
            self.paint_style,
        ]

    def paint_sky(self) -> None:
        stops = _SKIES[self.scene.time_of_day]
        positions = np.array([p for p, _ in stops])
        colours = np.array([c for _, c in stops], dtype=np.float32)
        rows = np.clip(np.arange(self.height) / max(self.horizon, 1), 0, 1)
        gradient = np.stack([np.interp(rows, positions, colours[:, ch]) for ch in range(3)], axis=-1)
        overcast = {
            "rain": ((105, 110, 120), 0.65),
            "snow": ((205, 210, 220), 0.35),
            "fog": ((200, 203, 208), 0.5),
        }
        for weather, (grey, amount) in overcast.items():
            if weather in self.scene.weather:
                target = np.array(_scaled(grey, max(self.light.brightness, 0.25)), dtype=np.float32)
                gradient = gradient * (1 - amount) + target * amount
        sky_colours = self.scene.colours_for("sky")
        if sky_colours:
            target = np.array(_scaled(sky_colours[0], max(self.light.brightness, 0.35)), dtype=np.float32)
            gradient = gradient * 0.45 + target * 0.55
        self.sky_horizon_colour = (
            _byte(gradient[self.horizon - 1, 0]),
            _byte(gradient[self.horizon - 1, 1]),
            _byte(gradient[self.horizon - 1, 2]),
        )
        self._store(np.broadcast_to(gradient[:, None, :], (self.height, self.width, 3)).copy())
        if "clouds" in self.elements or "rain" in self.scene.weather:
            self._paint_clouds()

    def _paint_clouds(self) -> None:
        rng = self._rng("clouds")
        mask = Image.new("L", (self.width, self.height), 0)
        draw = ImageDraw.Draw(mask)
        count = 7 if "rain" in self.scene.weather else 4
        for _ in range(count):
            cx = rng.uniform(0, self.width)
            cy = rng.uniform(0.08, 0.7) * self.horizon
            size = rng.uniform(0.05, 0.1) * self.width
            for _ in range(5):
                dx, dy = rng.uniform(-1.6, 1.6) * size, rng.uniform(-0.3, 0.3) * size
                r = size * rng.uniform(0.5, 0.9)
                draw.ellipse((cx + dx - r, cy + dy - r * 0.7, cx + dx + r, cy + dy + r * 0.7), fill=255)
        soft = (
            np.asarray(mask.filter(ImageFilter.GaussianBlur(4 * self.unit)), dtype=np.float32)[..., None]
            / 255
        )
        base: RGB = (120, 124, 132) if "rain" in self.scene.weather else (250, 250, 252)
        colour = np.array(self.light.shade(base, tint_scale=1.5), dtype=np.float32)
        self._store(self._pixels() * (1 - 0.85 * soft) + colour * 0.85 * soft)

    def paint_sky_lights(self) -> None:
        """Sun, moon and stars; their positions come from the seed."""
        rng = self._place("sky lights")
        # a fresh drawing takes its stars from the same generator as the moon (as it always has);
        # a variation or a re-seeded edit keeps the moon's place and draws new stars
        stars = rng if isinstance(rng, np.random.Generator) and self.plain else self._rng("sky lights")
        time = self.scene.time_of_day
        clear = not (self.scene.weather & {"rain", "fog"})
        if time == "night" or "moon" in self.elements:
            radius = 0.045 * min(self.width, self.height)
            x, y = rng.uniform(0.15, 0.85) * self.width, rng.uniform(0.1, 0.3) * self.height
            self._glow(x, y, radius * 3, (200, 205, 230), 0.35)
            self._disc(x, y, radius, (240, 240, 222))
            self.light_source = (x, y, radius, (220, 222, 210))
        if (time == "night" and clear) or "stars" in self.elements:
            self._paint_stars(stars, strength=1.0 if time == "night" else 0.4)
        if (
            time != "night"
            and clear
            and ("sun" in self.elements or time in ("dawn", "sunset", "day", "morning"))
        ):
            low = time in ("dawn", "sunset")
            radius = (0.085 if low else 0.06) * min(self.width, self.height)
            x = rng.uniform(0.2, 0.8) * self.width
            y = self.horizon - radius * 0.6 if low else self.horizon * (0.5 if time == "morning" else 0.25)
            colour: RGB = {"dawn": (255, 210, 150), "sunset": (255, 190, 90)}.get(time, (255, 250, 215))
            self._glow(x, y, radius * 4, colour, 0.55)
            self._disc(x, y, radius, colour)
            self.light_source = (x, y, radius, colour)

    def _disc(self, x: float, y: float, radius: float, colour: RGB) -> None:
        ImageDraw.Draw(self.image).ellipse((x - radius, y - radius, x + radius, y + radius), fill=colour)

    def _glow(self, x: float, y: float, radius: float, colour: RGB, strength: float) -> None:
        ys, xs = np.ogrid[: self.height, : self.width]
        falloff = np.exp(-(((xs - x) ** 2 + (ys - y) ** 2) / radius**2))[..., None] * strength
        pixels = self._pixels()
        self._store(pixels * (1 - falloff) + np.array(colour, dtype=np.float32) * falloff)

    def _paint_stars(self, rng: np.random.Generator, strength: float) -> None:
        count = int(np.clip(self.width * self.height / 1200, 20, 900))
        xs = rng.uniform(0, self.width, count)
        ys = rng.uniform(0, 0.92, count) * self.horizon
        brightness = rng.uniform(0.4, 1.0, count) * strength
        big = rng.uniform(0, 1, count) < 0.15
        pixels = self._pixels()
        for x, y, level, is_big in zip(xs, ys, brightness, big, strict=True):
            r = max(1, round(self.unit * (1.2 if is_big else 0.6)))
            row, col = int(y), int(x)
            patch = pixels[max(row - r + 1, 0) : row + r, max(col - r + 1, 0) : col + r]
            patch[:] = patch * (1 - level) + 250 * level
        self._store(pixels)

    def paint_far(self) -> None:
        """Mountains, far hills and the city skyline, all standing on the horizon."""
        if "mountains" in self.elements:
            self._paint_mountains()
        if "hills" in self.elements:
            rng = self._place("far hills")
            tops = self.horizon - (0.04 + 0.035 * (1 + self._smooth_curve(rng))) * self.height
            colour = _mix(self._ground_colour(), self.sky_horizon_colour, 0.35)
            self._fill_under(tops, self.horizon, self._shade_ground(colour))
        if "city" in self.elements:
            self._paint_city()

    def _paint_mountains(self) -> None:
        rng = self._place("mountains")
        base = self._colour("mountains", _MOUNTAIN)
        # far range first (higher, hazier), then the near range in front of it
        for base_height, rise, haze in ((0.12, 0.26, 0.45), (0.06, 0.2, 0.15)):
            ridge = self._ridge(rng) ** 1.3
            tops = self.horizon - (base_height + rise * ridge) * self.height
            colour = self.light.shade(_mix(base, self.sky_horizon_colour, haze), tint_scale=0.6)
            ys = np.arange(self.height)[:, None]
            inside = (ys >= tops[None, :]) & (ys < self.horizon)
            pixels = self._pixels()
            # lighter at the peaks, darker at the foot, like light falling from above
            below_peak = (ys - tops[None, :]) / max(self.horizon - float(tops.min()), 1.0)
            lit = (1.12 - 0.3 * np.clip(below_peak, 0, 1))[..., None]
            shaded = np.array(colour, dtype=np.float32) * lit
            pixels = np.where(inside[..., None], shaded, pixels)
            # drawn whether used or not, so adding snow to a prompt keeps the same ridges
            snow_capped = rng.uniform() < 0.5
            wobble = self._smooth_curve(rng)
            if self.snowy or snow_capped:
                peak = tops.min()
                snowline = peak + (self.horizon - peak) * 0.35 + wobble * 0.02 * self.height
                caps = inside & (ys < snowline[None, :])
                snow = np.array(self.light.shade(_SNOW, floor=0.55, tint_scale=0.7), dtype=np.float32)
                pixels = np.where(caps[..., None], snow * lit, pixels)
            self._store(pixels)

    def _paint_city(self) -> None:
        rng = self._place("city")
        draw = ImageDraw.Draw(self.image)
        wall = self.light.shade(self._colour("city", _BUILDING), floor=0.5, tint_scale=0.5)
        night = self.scene.time_of_day in ("night", "sunset")
        x = -rng.uniform(0, 0.05) * self.width
        while x < self.width:
            w = rng.uniform(0.045, 0.1) * self.width
            h = rng.uniform(0.08, 0.32) * self.height
            top = self.horizon - h
            draw.rectangle((x, top, x + w, self.horizon), fill=_scaled(wall, rng.uniform(0.85, 1.1)))
            step = max(3.0, 4.5 * self.unit)
            for wy in np.arange(top + step, self.horizon - step, step * 1.6):
                for wx in np.arange(x + step * 0.6, x + w - step, step * 1.4):
                    on = rng.uniform() < (0.45 if night else 0.9)
                    if on:
                        colour = _LIT_WINDOW if night else self.light.shade(_DAY_WINDOW)
                        draw.rectangle((wx, wy, wx + step * 0.6, wy + step * 0.7), fill=colour)
            x += w + rng.uniform(0, 0.015) * self.width

    def _ground_colour(self) -> RGB:
        if self.snowy:
            return _SNOW
        if "forest" in self.elements:
            return _mix(self._colour("forest", _CONIFER), _GRASS, 0.4)
        if "hills" in self.scene.elements:
            return self._colour("hills", _GRASS)
        if "city" in self.elements and not self.elements & {"hills", "forest", "trees", "flowers"}:
            return _PAVEMENT
        return _GRASS

    def _shade_ground(self, colour: RGB) -> RGB:
        return self.light.shade(colour, floor=0.66 if self.snowy else 0.0)

    def _fill_under(self, tops: Array, bottom: int, colour: RGB, factor: Array | None = None) -> None:
        ys = np.arange(self.height)[:, None]
        inside = (ys >= tops[None, :]) & (ys < bottom)
        pixels = self._pixels()
        fill = np.array(colour, dtype=np.float32)
        if factor is not None:
            fill = fill * factor
        self._store(np.where(inside[..., None], fill, pixels))

    def paint_ground(self) -> None:
        """Ground (grass, snow, sand, pavement) or water from the horizon down."""
        pixels = self._pixels()
        near = np.array(self._shade_ground(self._ground_colour()), dtype=np.float32)
        far = np.array(
            _mix(self._shade_ground(self._ground_colour()), self.sky_horizon_colour, 0.3), dtype=np.float32
        )
        depth = np.linspace(0, 1, self.height - self.horizon)[:, None]
        ground = far * (1 - depth) + near * (0.85 + 0.15 * (1 - depth)) * depth
        pixels[self.horizon :] = ground[:, None, :]
        self._store(pixels)
        if "sea" in self.elements:
            self._paint_water(self.horizon, self.shore)
            if self.shore < self.height:
                sand = _SNOW if self.snowy else _SAND
                rng = self._place("shore")
                tops = self.shore + self._smooth_curve(rng) * 0.02 * self.height
                self._fill_under(tops, self.height, self._shade_ground(sand))
        if "hills" in self.elements:
            rng = self._place("near hills")
            tops = self._lerp_ground(0.3) + self._smooth_curve(rng) * 0.08 * self.height
            self._fill_under(tops, self.shore, _scaled(self._shade_ground(self._ground_colour()), 0.9))

    def _paint_water(self, top: int, bottom: int) -> None:
        rng = self._rng("water")
        water = self._colour("sea", _WATER)
        deep = np.array(self.light.shade(water, tint_scale=0.5), dtype=np.float32)
        shallow = np.array(
            _mix(self.light.shade(water, tint_scale=0.5), self.sky_horizon_colour, 0.45), dtype=np.float32
        )
        depth = np.linspace(0, 1, max(bottom - top, 1))[:, None]
        pixels = self._pixels()
        pixels[top:bottom] = (shallow * (1 - depth) + deep * depth)[:, None, :]
        self._store(pixels)
        draw = ImageDraw.Draw(self.image)
        highlight = _mix(self.light.shade(water, tint_scale=0.5), (235, 240, 250), 0.35)
        for _ in range(int(self.width * (bottom - top) / 220)):
            y = rng.uniform(top + 1, bottom)
            length = (0.01 + 0.05 * (y - top) / max(bottom - top, 1)) * self.width
            x = rng.uniform(-length, self.width)
            draw.line((x, y, x + length, y), fill=highlight, width=max(1, round(self.unit * 0.6)))
        if self.light_source is not None:
            sx, _, radius, colour = self.light_source
            for y in np.arange(top + 1, bottom, max(2.0, 2.5 * self.unit)):
                spread = radius * (0.6 + 1.6 * (y - top) / max(bottom - top, 1))
                width = spread * rng.uniform(0.3, 1.0)
                x = sx + rng.uniform(-0.4, 0.4) * spread
                draw.line(
                    (x - width, y, x + width, y),
                    fill=_mix(colour, highlight, 0.25),
                    width=max(1, round(self.unit)),
                )

    def paint_middle(self) -> None:
        """Lake, road and forest: the things that sit on the ground between horizon and viewer."""
        if "lake" in self.elements:
            rng = self._place("lake")
            cx = rng.uniform(0.3, 0.7) * self.width
            cy = self._lerp_ground(rng.uniform(0.25, 0.4))
            rx, ry = (
                rng.uniform(0.25, 0.38) * self.width,
                rng.uniform(0.08, 0.13) * (self.height - self.horizon),
            )
            ys, xs = np.ogrid[: self.height, : self.width]
            inside = ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1
            water = _mix(
                self.light.shade(self._colour("lake", _WATER), tint_scale=0.5), self.sky_horizon_colour, 0.4
            )
            shade = 1 + 0.12 * np.sin(ys / max(1.5, 1.5 * self.unit))[..., None]
            self._store(
                np.where(inside[..., None], np.array(water, dtype=np.float32) * shade, self._pixels())
            )
        if "road" in self.elements:
            self._paint_road()
        if "forest" in self.elements:
            self._paint_forest()

    def _paint_road(self) -> None:
        rng = self._place("road")
        draw = ImageDraw.Draw(self.image)
        bottom_x = rng.uniform(0.35, 0.65) * self.width
        vanish_x = rng.uniform(0.35, 0.65) * self.width
        half = 0.24 * self.width
        surface = _SNOW if self.snowy else self._colour("road", (95, 95, 100))
        draw.polygon(
            [
                (bottom_x - half, self.height),
                (bottom_x + half, self.height),
                (vanish_x + 2, self.horizon),
                (vanish_x - 2, self.horizon),
            ],
            fill=self._shade_ground(_mix(surface, (90, 90, 95), 0.3 if self.snowy else 0.0)),
        )
        line_colour = self.light.shade((235, 205, 80), floor=0.6)
        for t in np.arange(0.05, 1.0, 0.12):
            t1 = t + 0.06
            points = [
                (bottom_x + (vanish_x - bottom_x) * s, self.height + (self.horizon - self.height) * s)
                for s in (t, t1)
            ]
            draw.line(points, fill=line_colour, width=max(1, round(self.unit * 2 * (1 - t))))

    def _paint_forest(self) -> None:
        rng = self._place("forest")
        colour = self._colour("forest", _CONIFER)
        rows = ((0.0, 0.13, 34, 0.35), (0.2, 0.2, 16, 0.15), (0.55, 0.3, 8, 0.0))
        for depth_fraction, height_fraction, per_row, haze in rows:
            count = max(3, round(per_row * self.width / max(self.height, 1)))
            base = self._lerp_ground(depth_fraction)
            for index in range(count):
                x = (index + rng.uniform(-0.4, 0.4)) * self.width / (count - 1)
                h = height_fraction * self.height * rng.uniform(0.75, 1.2)
                y = base + rng.uniform(0, 0.06) * self.height
                if depth_fraction > 0.4 and not self._clear_of_figures(x, 0.25 * h):
                    continue
                tree = _mix(_scaled(colour, rng.uniform(0.8, 1.15)), self.sky_horizon_colour, haze)
                self._conifer(x, y, h, tree)

    def _conifer(self, x: float, base_y: float, height: float, colour: RGB) -> None:
        draw = ImageDraw.Draw(self.image)
        trunk_w = max(1.0, 0.06 * height)
        draw.rectangle(
            (x - trunk_w / 2, base_y - 0.2 * height, x + trunk_w / 2, base_y), fill=self.light.shade(_TRUNK)
        )
        foliage = self.light.shade(colour)
        snow = self.light.shade(_SNOW, floor=0.6)
        for tier in range(3):
            bottom = base_y - 0.15 * height - tier * 0.25 * height
            top = bottom - 0.45 * height
            half = 0.22 * height * (1 - tier * 0.22)
            draw.polygon([(x - half, bottom), (x + half, bottom), (x, top)], fill=foliage)
            if self.snowy:
                draw.polygon(
                    [
                        (x - half * 0.35, top + 0.16 * height),
                        (x + half * 0.35, top + 0.16 * height),
                        (x, top),
                    ],
                    fill=snow,
                )

    def _deciduous(self, x: float, base_y: float, height: float, colour: RGB) -> None:
        draw = ImageDraw.Draw(self.image)
        trunk_w = max(1.0, 0.08 * height)
        draw.rectangle(
            (x - trunk_w / 2, base_y - 0.55 * height, x + trunk_w / 2, base_y), fill=self.light.shade(_TRUNK)
        )
        r = 0.3 * height
        cy = base_y - 0.68 * height
        draw.ellipse((x - r, cy - r, x + r, cy + r), fill=self.light.shade(colour))
        draw.ellipse(
            (x - r * 0.8, cy - r * 0.2, x + r * 0.1, cy + r * 0.9),
            fill=self.light.shade(_scaled(colour, 0.85)),
        )
        if self.snowy:
            draw.chord((x - r, cy - r, x + r, cy + r), 200, 340, fill=self.light.shade(_SNOW, floor=0.6))

    def paint_near(self) -> None:
        """House or cabin, single trees and flowers, closest to the viewer."""
        if "house" in self.elements or "cabin" in self.elements:
            self._paint_house("cabin" if "cabin" in self.elements else "house")
        if "trees" in self.elements:
            rng = self._place("trees")
            canopy = self._colour("trees", _CANOPY)
            for _ in range(int(rng.integers(2, 5))):
                for _attempt in range(8):
                    x = rng.uniform(0.05, 0.95) * self.width
                    h = rng.uniform(0.28, 0.42) * self.height
                    if self._clear_of_figures(x, 0.3 * h) and abs(x - self.house_x) > 0.15 * self.width:
                        break
                y = self._lerp_ground(rng.uniform(0.45, 0.75))
                if rng.uniform() < 0.6:
                    self._deciduous(x, y, h, canopy)
                else:
                    self._conifer(x, y, h, _mix(canopy, _CONIFER, 0.5))
        if "flowers" in self.elements:
            self._paint_flowers()

    def _paint_house(self, kind: str) -> None:
        rng = self._place("house")
        draw = ImageDraw.Draw(self.image)
        cabin = kind == "cabin"
        wall_default: RGB = (125, 82, 48) if cabin else (226, 206, 170)
        walls = self.light.shade(self._colour(kind, wall_default), floor=0.45)
        roof = self.light.shade((82, 55, 36) if cabin else (155, 55, 45), floor=0.4)
        w = rng.uniform(0.18, 0.24) * self.width
        h = w * 0.55
        x0 = self.house_x - w / 2
        base = self._lerp_ground(rng.uniform(0.3, 0.45))
        top = base - h
        draw.rectangle((x0, top, x0 + w, base), fill=walls)
        if cabin:
            for y in np.arange(top + h / 5, base, h / 5):
                draw.line((x0, y, x0 + w, y), fill=_scaled(walls, 0.75), width=max(1, round(self.unit * 0.7)))
        peak = top - 0.45 * h
        draw.polygon([(x0 - 0.08 * w, top), (x0 + 1.08 * w, top), (self.house_x, peak)], fill=roof)
        if self.snowy:
            snow = self.light.shade(_SNOW, floor=0.6)
            draw.polygon(
                [
                    (x0 - 0.08 * w, top),
                    (self.house_x, peak),
                    (x0 + 1.08 * w, top),
                    (self.house_x, peak + 0.12 * h),
                ],
                fill=snow,
            )
        lit = self.scene.time_of_day in ("night", "sunset", "dawn")
        window = _LIT_WINDOW if lit else self.light.shade(_DAY_WINDOW)
        door_w = 0.16 * w
        draw.rectangle(
            (self.house_x - door_w / 2, base - 0.6 * h, self.house_x + door_w / 2, base),
            fill=self.light.shade((85, 55, 35)),
        )
        for wx in (x0 + 0.14 * w, x0 + 0.66 * w):
            draw.rectangle((wx, top + 0.25 * h, wx + 0.2 * w, top + 0.55 * h), fill=window)

    def _paint_flowers(self) -> None:
        rng = self._rng("flowers")
        draw = ImageDraw.Draw(self.image)
        chosen = self.scene.colours_for("flowers") or _FLOWER_COLOURS
        count = int(self.width * (self.height - self.horizon) / 260)
        for _ in range(count):
            depth = rng.uniform(0.35, 1.0)
            y = self._lerp_ground(depth)
            x = rng.uniform(0, self.width)
            r = max(1.0, (0.5 + 2.2 * depth) * self.unit)
            colour = self.light.shade(chosen[int(rng.integers(len(chosen)))], floor=0.45)
            draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
            if r > 2:
                c = r * 0.35
                draw.ellipse((x - c, y - c, x + c, y + c), fill=self.light.shade((250, 215, 70), floor=0.45))

    def paint_figures(self) -> None:
        for figure in self.figures:
            self._paint_figure(figure)

    def _paint_figure(self, figure: _Figure) -> None:
        """Animals and people stay readable at night: they get a floor on their brightness."""
        subject = figure.subject
        body = subject.colour or _SUBJECT_DEFAULTS.get(subject.kind, (90, 90, 90))
        floor = 0.5 + 0.5 * self.light.brightness
        tones: dict[str, RGB] = {
            "body": body,
            "dark": _scaled(body, 0.55) if subject.family != "person" else (45, 45, 55),
            "light": _mix(body, (250, 248, 240), 0.75),
            "eye": (20, 18, 18),
            "skin": (232, 190, 160),
            "accent": (235, 170, 40) if subject.kind in ("bird", "cat") else (150, 115, 75),
            "hair": (70, 45, 30),
        }
        shaded = {name: self.light.shade(c, floor=floor, tint_scale=0.5) for name, c in tones.items()}
        outline = _scaled(shaded["body"], 0.6)
        draw = ImageDraw.Draw(self.image)
        scale = figure.height
        edge = max(1, round(self.unit * 0.6))

        def at(point: tuple[float, float]) -> tuple[float, float]:
            return (figure.x + point[0] * scale * figure.facing, figure.base_y + point[1] * scale)

        for shape in _silhouette(subject.kind):
            fill = shaded[shape.tone]
            points = [at(p) for p in shape.points]
            if shape.kind == "ellipse":
                (x0, y0), (x1, y1) = points
                box = (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
                draw.ellipse(box, fill=fill, outline=outline if shape.tone == "body" else None, width=edge)
            elif shape.kind == "polygon":
                draw.polygon(points, fill=fill, outline=outline if shape.tone == "body" else None, width=edge)
            else:
                draw.line(points, fill=fill, width=max(1, round(shape.width * scale)))

    def paint_weather(self) -> None:
        rng = self._rng("weather")
        weather = self.scene.weather
        if "fog" in weather:
            haze = np.array(_scaled((205, 208, 212), max(self.light.brightness, 0.3)), dtype=np.float32)
            rows = np.arange(self.height, dtype=np.float32)
            distance = np.abs(rows - self.horizon) / self.height
            amount = (0.62 - 0.9 * distance).clip(0.3, 0.62)[:, None, None]
            self._store(self._pixels() * (1 - amount) + haze * amount)
        if "rain" in weather:
            mask = Image.new("L", (self.width, self.height), 0)
            draw = ImageDraw.Draw(mask)
            length = 0.05 * self.height
            for _ in range(int(self.width * self.height / 160)):
                x, y = rng.uniform(-length, self.width), rng.uniform(-length, self.height)
                draw.line(
                    (x, y, x + 0.25 * length, y + length),
                    fill=int(rng.integers(120, 230)),
                    width=max(1, round(self.unit * 0.5)),
                )
            streaks = np.asarray(mask, dtype=np.float32)[..., None] / 255
            self._store(
                self._pixels() * 0.85 * (1 - streaks) + np.array((200, 210, 225), dtype=np.float32) * streaks
            )
        if "snow" in weather:
            draw = ImageDraw.Draw(self.image)
            flake = self.light.shade((250, 250, 255), floor=0.75, tint_scale=0.3)
            for _ in range(int(self.width * self.height / 300)):
                x, y = rng.uniform(0, self.width), rng.uniform(0, self.height)
                r = rng.uniform(0.4, 1.4) * self.unit
                draw.ellipse((x - r, y - r, x + r, y + r), fill=flake)

    def paint_texture(self) -> None:
        """A colour cast for unattached colours, then fine grain so flat areas look drawn."""
        pixels = self._pixels()
        for name in self.scene.palette[:2]:
            colour = np.array(COLOURS[name], dtype=np.float32)
            luminance = pixels.mean(axis=-1, keepdims=True) / 255
            pixels = pixels * 0.65 + colour * (0.5 + 0.5 * luminance) * 0.35
        grain = self._rng("texture").normal(0, 2.5, (self.height, self.width, 1)).astype(np.float32)
        self._store(pixels + grain)

    def paint_exposure(self) -> None:
        """Mood words ("dark, low-key lighting", "bright") scale the whole picture's brightness."""
        if self.scene.exposure != 1.0:
            pixels = self._pixels()
            self._store(np.clip(pixels * self.scene.exposure, 0, 255))

    def paint_style(self) -> None:
        if self.scene.style is not None:
            self.image = _STYLE_FILTERS[self.scene.style](self.image, self._rng("style"), self.unit)


# --------------------------------------------------------------------------------------------
# Styles: whole-image filters applied last


def _watercolor(image: Image.Image, rng: np.random.Generator, unit: float) -> Image.Image:
    soft = image.filter(ImageFilter.GaussianBlur(1.3 * unit))
    edges = np.asarray(soft.convert("L").filter(ImageFilter.FIND_EDGES), dtype=np.float32)[..., None]
    pixels = _to_array(soft) - edges * 0.6
    paper = np.array((250, 246, 238), dtype=np.float32)
    pixels = pixels * 0.85 + paper * 0.15
    return _to_image(pixels + rng.normal(0, 4, (*pixels.shape[:2], 1)))


def _pixel_art(image: Image.Image, rng: np.random.Generator, unit: float) -> Image.Image:
    block = max(3, round(min(image.size) / 48))
    small = image.resize((max(1, image.width // block), max(1, image.height // block)), Image.Resampling.BOX)
    palette = small.quantize(colors=24, method=Image.Quantize.MEDIANCUT).convert("RGB")
    return palette.resize(image.size, Image.Resampling.NEAREST)


def _neon(image: Image.Image, rng: np.random.Generator, unit: float) -> Image.Image:
    smooth = image.filter(ImageFilter.GaussianBlur(0.8 * unit))  # no glowing film grain
    edges = ImageEnhance.Color(smooth.filter(ImageFilter.FIND_EDGES)).enhance(2.5)
    lines = _to_array(edges)
    glow = _to_array(edges.filter(ImageFilter.GaussianBlur(3 * unit)))
    return _to_image(_to_array(image) * 0.35 + lines * 1.6 + glow * 2.2)


def _monochrome(image: Image.Image, rng: np.random.Generator, unit: float) -> Image.Image:
    return ImageOps.autocontrast(image.convert("L"), cutoff=1).convert("RGB")


def _pastel(image: Image.Image, rng: np.random.Generator, unit: float) -> Image.Image:
    return _to_image(_to_array(image) * 0.58 + 255 * 0.42)


def _sepia(image: Image.Image, rng: np.random.Generator, unit: float) -> Image.Image:
    pixels = _to_array(image)
    matrix = np.array([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]], dtype=np.float32)
    toned = pixels @ matrix.T
    ys, xs = np.ogrid[: image.height, : image.width]
    distance = np.hypot((xs - image.width / 2) / image.width, (ys - image.height / 2) / image.height)
    vignette = (1 - 0.6 * distance**2)[..., None]
    return _to_image(toned * vignette)


def _oil_painting(image: Image.Image, rng: np.random.Generator, unit: float) -> Image.Image:
    # dabs of paint: a median filter on a reduced copy (a full-size median of 2048 px takes seconds)
    reduce = max(1, round(unit / 1.5))
    small = image.resize((image.width // reduce, image.height // reduce), Image.Resampling.BOX)
    dabs = small.filter(ImageFilter.MedianFilter(5)).resize(image.size, Image.Resampling.BICUBIC)
    painted = ImageEnhance.Color(dabs).enhance(1.25)
    painted = painted.filter(ImageFilter.UnsharpMask(radius=2 * unit, percent=80, threshold=2))
    strokes = rng.normal(0, 9, (image.height, max(1, image.width // 6))).astype(np.float32)
    brush = Image.fromarray(np.clip(strokes + 128, 0, 255).astype(np.uint8)).resize(
        image.size, Image.Resampling.BILINEAR
    )
    return _to_image(_to_array(painted) + (np.asarray(brush, dtype=np.float32)[..., None] - 128))


def _line_art(image: Image.Image, rng: np.random.Generator, unit: float) -> Image.Image:
    edges = np.asarray(image.convert("L").filter(ImageFilter.FIND_EDGES), dtype=np.float32)[..., None]
    ink = np.clip(edges * 3 / 255, 0, 1)
    paper = np.array((250, 248, 242), dtype=np.float32)
    return _to_image(paper * (1 - ink) + _to_array(image) * 0.45 * ink)


_STYLE_FILTERS: dict[Style, Callable[[Image.Image, np.random.Generator, float], Image.Image]] = {
    "watercolor": _watercolor,
    "pixel art": _pixel_art,
    "neon": _neon,
    "monochrome": _monochrome,
    "pastel": _pastel,
    "sepia": _sepia,
    "oil painting": _oil_painting,
    "line art": _line_art,
}


# --------------------------------------------------------------------------------------------
# The backend


@dataclass(frozen=True)
class _Job:
    """A request after validation: everything the drawing loop needs, nothing it must check."""

    operation: Operation
    prompt: str
    scene: Scene
    width: int
    height: int
    seeds: list[int]
    steps: int
    strength: float | None
    source: Image.Image | None
    mask: Image.Image | None
    notes: list[str]


# --------------------------------------------------------------------------------------------
# img2img: the source restyled by the prompt's look words


def _has_look(scene: Scene) -> bool:
    """Whether the prompt says anything img2img can change: scenery, light, weather, colour, mood, style."""
    return bool(
        scene.elements
        or scene.time_of_day != "day"
        or scene.weather
        or scene.palette
        or scene.element_colours
        or any(subject.colour_name for subject in scene.subjects)
        or scene.exposure != 1.0
        or scene.style
    )


class _Restyler:
    """The source's pixels relit and recoloured as the prompt says; `stages()` in the painter's manner.

    Every step but the last is a per-pixel colour change that keeps the order of light and dark
    (the grade and colour words keep each pixel's luminance exactly; light, weather and mood scale
    or shift it evenly), so edges and the layout stay where they were. Only the style filter,
    applied last as in a fresh drawing, works on neighbourhoods (watercolor softens, pixel art
    blocks), and even that keeps the layout recognisable.
    """

    def __init__(self, scene: Scene, source: Image.Image, seed: int) -> None:
        self.scene = scene
        self.seed = seed
        self.unit = min(source.size) / 256
        self.pixels = _to_array(source)
        light = _LIGHTS[scene.time_of_day]
        if "rain" in scene.weather:
            light = replace(light, brightness=light.brightness * 0.8)
        self.light = light
        # the named scenery alone, in plain daylight: where "a forest" or "the sea" gets its colours
        self.scenery: _Painter | None = None
        if scene.elements:
            plain = replace(
                scene, time_of_day="day", weather=frozenset(), palette=(), style=None, exposure=1.0
            )
            self.scenery = _Painter(plain, source.width, source.height, seed, "restyle:")

    @property
    def image(self) -> Image.Image:
        return _to_image(self.pixels)

    def stages(self) -> list[Callable[[], None]]:
        scenery = [*self.scenery.stages(), self.pull_scenery] if self.scenery is not None else []
        return [
            *scenery,
            self.relight,
            self.grade,
            self.add_weather,
            self.recolour,
            self.expose,
            self.stylise,
        ]

    def _luma(self, pixels: Array) -> Array:
        return np.asarray(pixels @ _LUMA, dtype=np.float32)[..., None]

    def pull_scenery(self) -> None:
        """The source's average colour moves toward the scenery's; brightness stays pixel by pixel.

        Only the colour difference from grey (each pixel minus its luminance) is shifted, so a
        forest turns the picture greener and the sea bluer without moving any light or shadow. The
        target is the drawing from a little above its horizon down, where scenery stands, so the
        default sky above it does not water the colours down.
        """
        assert self.scenery is not None
        top = max(0, self.scenery.horizon - self.scenery.height // 5)
        target = _to_array(self.scenery.image)[top:]
        chroma = self.pixels - self._luma(self.pixels)
        target_chroma = (target - self._luma(target)).reshape(-1, 3).mean(axis=0)
        shift = _SCENERY_PULL * (target_chroma - chroma.reshape(-1, 3).mean(axis=0))
        self.pixels = self.pixels + shift.astype(np.float32)

    def relight(self) -> None:
        """The light of the time of day, as every drawn colour gets it (`_Light.shade`)."""
        light = self.light
        tint = np.array(light.tint, dtype=np.float32)
        amount = light.tint_amount
        self.pixels = light.brightness * ((1 - amount) * self.pixels + amount * tint)

    def grade(self) -> None:
        """Hues toward the time of day's sky (night: navy; sunset: purple shadows, golden lights).

        The colour comes from the sky gradient at the pixel's own brightness and is scaled to that
        brightness, so the grade changes hue, never the light-and-dark layout.
        """
        amount = _GRADE[self.scene.time_of_day]
        if not amount:
            return
        stops = _SKIES[self.scene.time_of_day]
        positions = np.array([p for p, _ in stops])  # dark = the top of the sky, light = its horizon
        colours = np.array([c for _, c in stops], dtype=np.float32)
        luma = self._luma(self.pixels)
        level = np.clip(luma[..., 0] / 255, 0, 1)
        mapped = np.stack([np.interp(level, positions, colours[:, ch]) for ch in range(3)], axis=-1)
        mapped = mapped.astype(np.float32)
        mapped *= luma / np.maximum(self._luma(mapped), 1.0)
        self.pixels = self.pixels * (1 - amount) + mapped * amount

    def add_weather(self) -> None:
        for weather in sorted(self.scene.weather):
            colour, amount, desaturation = _WEATHER_CASTS[weather]
            luma = self._luma(self.pixels)
            muted = self.pixels * (1 - desaturation) + luma * desaturation
            cast = np.array(_scaled(colour, max(self.light.brightness, 0.3)), dtype=np.float32)
            self.pixels = muted * (1 - amount) + cast * amount

    def recolour(self) -> None:
        """Colour words tint the picture at each pixel's own brightness ("colourise", not paint over)."""
        bound = [name for _, names in self.scene.element_colours for name in names]
        bound += [subject.colour_name for subject in self.scene.subjects if subject.colour_name]
        words = [(name, _PALETTE_TINT) for name in self.scene.palette]
        words += [(name, _BOUND_TINT) for name in bound]
        for name, amount in words[:2]:
            colour = np.array(COLOURS[name], dtype=np.float32)
            luma = self._luma(self.pixels)
            tinted = colour * (luma / max(float(colour @ _LUMA), 1.0))
            self.pixels = self.pixels * (1 - amount) + tinted * amount

    def expose(self) -> None:
        if self.scene.exposure != 1.0:
            self.pixels = self.pixels * self.scene.exposure

    def stylise(self) -> None:
        if self.scene.style is not None:
            rng = np.random.default_rng([self.seed, zlib.crc32(b"restyle")])
            styled = _STYLE_FILTERS[self.scene.style](self.image, rng, self.unit)
            self.pixels = _to_array(styled)
        else:
            self.pixels = np.clip(self.pixels, 0, 255)


# --------------------------------------------------------------------------------------------
# The backend


class OfflineBackend:
    """Draws prompts offline; see the module docstring for what it can and cannot show."""

    name = NAME
    model = MODEL
    capabilities: frozenset[Operation] = frozenset(
        {Operation.GENERATE, Operation.EDIT, Operation.INPAINT, Operation.VARIATION, Operation.IMG2IMG}
    )

    def estimate_cost(self, request: ImageRequest) -> float | None:
        return 0.0  # drawn on this machine

    def run(
        self,
        request: ImageRequest,
        progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
    ) -> ImageResult:
        check_capability(self, request.operation)
        job = _validate(request)
        total = job.steps * len(job.seeds)
        done = 0

        def tick() -> None:
            nonlocal done
            done += 1
            if progress is not None:
                progress(done, total)

        known: _Drawn | None = None
        if job.source is not None and job.operation is not Operation.IMG2IMG:
            if cancel is not None and cancel.cancelled:
                raise Cancelled()
            known = _recognise(job.source)
        notes = job.notes + _source_notes(job, known)

        images: list[GeneratedImage] = []
        for seed in job.seeds:
            try:
                image, scene, drawn = _make(job, seed, known, tick, cancel)
            except Cancelled:
                if not images:
                    raise
                raise Cancelled(_result(job, known, images, notes)) from None
            revised = scene.describe()
            if drawn is not None:
                if drawn.layout != _Layout(seed):
                    revised += f"; {drawn.layout.describe()}"
                image.info[_INFO_KEY] = drawn.to_json()
            images.append(GeneratedImage(image, seed, revised_prompt=revised))
        return _result(job, known, images, notes)


def _result(job: _Job, known: _Drawn | None, images: list[GeneratedImage], notes: list[str]) -> ImageResult:
    """The images drawn so far with the parameters they were drawn with (a stopped batch: fewer seeds)."""
    seeds = [generated.seed for generated in images]
    params: dict[str, object] = {
        "steps": job.steps,
        "seed": seeds[0],
        "seeds": seeds,
        "size": f"{job.width}x{job.height}",
        "width": job.width,
        "height": job.height,
        "renderer": RENDERER,
        "scene": job.scene.describe(),
    }
    # an edit of one of its own drawings redraws it on the same layout: no fade to measure
    redrawn = job.operation is Operation.EDIT and known is not None and job.mask is None
    if job.strength is not None and not redrawn:
        params["strength"] = job.strength
    if job.scene.style:
        params["style"] = job.scene.style
    return ImageResult(images=images, backend=NAME, model=MODEL, params=params, notes=notes)


def _run_in_steps(
    stages: Sequence[Callable[[], None]], steps: int, tick: Callable[[], None], cancel: CancelToken | None
) -> None:
    """Spread the drawing layers over `steps` like a sampler's steps; cancel is honoured between them."""
    for step in range(steps):
        if cancel is not None and cancel.cancelled:
            raise Cancelled()
        start, stop = step * len(stages) // steps, (step + 1) * len(stages) // steps
        for stage in stages[start:stop]:
            stage()
        tick()


def _validate(request: ImageRequest) -> _Job:
    """Every check happens here, before any drawing, so a bad request fails fast and specifically."""
    operation = request.operation
    notes = [HONEST_NOTE]
    if not 1 <= request.n <= MAX_IMAGES:
        raise InvalidRequest(
            f"The offline renderer makes 1 to {MAX_IMAGES} images per request, not {request.n}."
        )
    steps = DEFAULT_STEPS if request.steps is None else request.steps
    if not 1 <= steps <= MAX_STEPS:
        raise InvalidRequest(f"Steps must be between 1 and {MAX_STEPS}, not {steps}.")
    prompt = request.prompt.strip()
    if operation in _NEEDS_PROMPT and not prompt:
        raise InvalidRequest(f"The prompt is empty; describe what the {operation.value} should show.")

    source: Image.Image | None = None
    if operation in _NEEDS_SOURCE:
        if not request.sources:
            raise InvalidRequest(f"A {operation.value} needs a source image, and none was given.")
        # the one it draws from goes through the same door as an upload: loaded, sane size, RGB(A)
        (source,), source_notes = check_sources(request.sources[:1])
        notes += source_notes
        given = request.sources[0]
        if isinstance(given, Image.Image) and source is not given:
            source.info = {**given.info, **source.info}  # how it was drawn, when it says
        if len(request.sources) > 1:
            notes.append(f"Only the first of the {len(request.sources)} source images was used.")
        width, height = source.size
        what = "The source image"
    else:
        width, height = request.width, request.height
        what = "The requested size"
    for side_name, side in (("wide", width), ("tall", height)):
        if not MIN_SIDE <= side <= MAX_SIDE:
            raise InvalidRequest(
                f"{what} is {width}x{height}; the offline renderer draws images {MIN_SIDE} to {MAX_SIDE} px "
                f"{side_name}, so {side} px is not possible."
            )

    strength: float | None = None
    if operation in DEFAULT_STRENGTH:
        strength = DEFAULT_STRENGTH[operation] if request.strength is None else float(request.strength)
        if not 0.0 <= strength <= 1.0:
            raise InvalidRequest(f"Strength must be between 0 and 1, not {request.strength}.")

    mask: Image.Image | None = None
    if operation is Operation.INPAINT and request.mask is None:
        raise InvalidRequest(
            "Inpainting needs a mask that marks the area to change (white or opaque = change)."
        )
    if request.mask is not None and operation in (Operation.INPAINT, Operation.EDIT) and source is not None:
        mask, mask_notes = prepare_mask(request.mask, source.size)
        notes += mask_notes

    if request.mask is not None and mask is None:
        notes.append(f"A {operation.value} does not use a mask; it was ignored.")

    scene = parse_scene(prompt)
    if operation is Operation.VARIATION:
        pass  # what a variation can do depends on its source; run() says so
    elif operation is Operation.IMG2IMG:
        if not _has_look(scene):
            notes.append(
                "img2img here keeps the picture's shapes and changes its look by the prompt's scenery, time "
                "of day, weather, colours, mood and style (for example 'a forest', 'at night', 'in the "
                "fog', 'pink', 'watercolor'); the prompt names none of them, so the image is unchanged. "
                "To add or replace things, ask for an edit instead."
            )
    elif prompt and not scene.understood:
        notes.append(
            "None of the prompt's words are in the sketch vocabulary, so this is a default landscape."
        )
    if scene.not_drawn and operation is not Operation.IMG2IMG:
        listed = ", ".join(f"“{thing}”" for thing in scene.not_drawn)
        left = "it is" if len(scene.not_drawn) == 1 else "they are"
        notes.append(f"The sketch renderer has no drawing for {listed}, so {left} left out of the picture.")
    if request.negative_prompt.strip():
        notes.append("The offline renderer does not use negative prompts; nothing from it was drawn.")

    seed = _default_seed(request) if request.seed is None else request.seed % 2**32
    return _Job(
        operation,
        prompt,
        scene,
        width,
        height,
        derive_seeds(seed, request.n),
        steps,
        strength,
        source,
        mask,
        notes,
    )


def _default_seed(request: ImageRequest) -> int:
    """Without a seed the same request still gives the same picture; different prompts differ."""
    key = f"{request.operation.value}|{request.prompt}|{request.width}x{request.height}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:4], "big")


def _flatten(image: Image.Image) -> Image.Image:
    """RGB version of a source; transparent areas become white rather than whatever colour they hide."""
    if image.mode == "RGB":
        return image
    if "A" in image.getbands() or "transparency" in image.info:
        rgba = image.convert("RGBA")
        backdrop = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(backdrop, rgba).convert("RGB")
    return image.convert("RGB")


def _make(
    job: _Job, seed: int, known: _Drawn | None, tick: Callable[[], None], cancel: CancelToken | None
) -> tuple[Image.Image, Scene, _Drawn | None]:
    """One image of the job: the picture, the scene it shows, and how to draw it again (if it can be).

    Nothing here cross-fades two different drawings, which would show two moons and a ghost of
    every house: a fresh drawing, a variation and an edit of one of this renderer's own pictures
    are each one drawing; everything else changes the source's own pixels.
    """
    operation, source = job.operation, job.source
    strength = job.strength if job.strength is not None else 1.0

    def draw(drawn: _Drawn) -> Image.Image:
        painter = _Painter(parse_scene(drawn.prompt), job.width, job.height, drawn.seed, layout=drawn.layout)
        _run_in_steps(painter.stages(), job.steps, tick, cancel)
        return painter.image

    def later(work: Callable[[], Image.Image]) -> Image.Image:
        """Pixel work on the source, spread over the steps like a drawing (progress and cancel)."""
        done: list[Image.Image] = []
        _run_in_steps([lambda: done.append(work())], job.steps, tick, cancel)
        return done[0]

    if source is None:
        drawn = _Drawn(job.prompt, seed, _Layout(seed))
        return draw(drawn), job.scene, drawn
    flat = _flatten(source)

    if operation is Operation.IMG2IMG:
        restyler = _Restyler(job.scene, flat, seed)
        _run_in_steps(restyler.stages(), job.steps, tick, cancel)
        return Image.blend(flat, restyler.image, strength), job.scene, None

    if operation is Operation.VARIATION:
        if known is None:
            return later(lambda: _reframe(flat, seed, strength)), job.scene, None
        # a sibling: the source's scene on the source's layout, nudged by this seed, new details
        prompt = job.prompt if job.scene.understood else known.prompt
        drawn = _Drawn(prompt, seed, known.layout.varied(seed, strength))
        return draw(drawn), parse_scene(prompt), drawn

    # edit and inpaint
    if known is not None:
        drawn = _Drawn(job.prompt, seed, known.layout)  # the same places, the prompt's things
        drawing = draw(drawn)
        if job.mask is None:
            return drawing, job.scene, drawn
        changed = Image.blend(flat, drawing, strength)
    elif operation is Operation.INPAINT:
        changed = Image.blend(flat, draw(_Drawn(job.prompt, seed, _Layout(seed))), strength)
    else:
        # not a drawing of ours: keep its picture and change its look (see `_Restyler`)
        restyler = _Restyler(job.scene, flat, seed)
        _run_in_steps(restyler.stages(), job.steps, tick, cancel)
        changed = _add_particles(Image.blend(flat, restyler.image, strength), job.scene, seed)
    if job.mask is None:
        return changed, job.scene, None
    # Only masked pixels may change; composite keeps every mask=0 pixel byte-identical to the source.
    base = source if source.mode in ("RGB", "RGBA") else flat
    return Image.composite(changed.convert(base.mode), base, job.mask), job.scene, None


def _source_notes(job: _Job, known: _Drawn | None) -> list[str]:
    """What the user should know about how the source was used."""
    if job.source is None or job.operation is Operation.IMG2IMG:
        return []
    if known is not None:
        if job.operation is Operation.VARIATION and not job.scene.understood:
            return ["No drawable words in the prompt, so the variation redraws the source's own prompt."]
        return []
    not_ours = (
        "The source is not one of this renderer's drawings as it stands (an upload, or an image "
        "changed since it was drawn), so "
    )
    if job.operation is Operation.VARIATION:
        return [not_ours + "each variation reframes and recolours it instead of redrawing it."]
    if job.operation is Operation.EDIT:
        return [
            not_ours + "the edit keeps its picture and changes its look (time of day, weather, colours, "
            "mood, style); it cannot add or move things in it."
        ]
    return []


def _add_particles(image: Image.Image, scene: Scene, seed: int) -> Image.Image:
    """Falling snow or rain drawn crisply over a picture (fog is already in the restyle's haze)."""
    weather = scene.weather - {"fog"}
    if not weather:
        return image
    painter = _Painter(replace(scene, weather=weather), image.width, image.height, seed, "edit:")
    painter.image = image.convert("RGB")
    painter.paint_weather()
    return painter.image


def _reframe(source: Image.Image, seed: int, strength: float = 0.75) -> Image.Image:
    """A seeded variation of a picture it cannot redraw: zoom, shift and recolour it a little.

    `strength` sets how far (0: the source itself); from 0.5 on it may also be mirrored.
    """
    rng = np.random.default_rng([seed, zlib.crc32(b"reframe")])
    amount = min(max(strength, 0.0), 1.0) / 0.75
    mirror = rng.uniform() < 0.5
    image = ImageOps.mirror(source) if mirror and strength >= 0.5 else source
    zoom = 1 - rng.uniform(0.08, 0.2) * amount
    w, h = image.size
    cw, ch = max(1, round(w * zoom)), max(1, round(h * zoom))
    left, top = round(rng.uniform(0, w - cw)), round(rng.uniform(0, h - ch))
    image = image.crop((left, top, left + cw, top + ch)).resize((w, h), Image.Resampling.LANCZOS)
    gains = 1 + rng.uniform(-0.15, 0.15, 3).astype(np.float32) * amount
    return _to_image(_to_array(image) * gains)


# --------------------------------------------------------------------------------------------
# Recognising its own drawings


#: The in-memory `info` entry of every picture this renderer can draw again; a stored PNG says the
#: same in its AUTOMATIC1111 `parameters` chunk (prompt, seed) and its revised prompt (layout).
_INFO_KEY = "atelier-offline"
_LAYOUT_NOTE = re.compile(
    r"; layout of seed (\d{1,10})((?:, varied by seed \d{1,10} \(strength [^)]{1,30}\))*)$"
)
_NUDGE_NOTE = re.compile(r", varied by seed (\d{1,10}) \(strength ([^)]{1,30})\)")
_SEED_FIELD = re.compile(r"(?:^|, )Seed: (\d{1,10})(?:,|$)")
#: Metadata longer than this is not ours (a crafted file must not cost time).
_MAX_INFO_CHARS = 20_000


@dataclass(frozen=True)
class _Drawn:
    """How one of this renderer's pictures was drawn: enough to draw it again, pixel for pixel."""

    prompt: str
    seed: int
    layout: _Layout

    def to_json(self) -> str:
        nudges = [list(nudge) for nudge in self.layout.nudges]
        return json.dumps(
            {"prompt": self.prompt, "seed": self.seed, "layout": self.layout.seed, "nudges": nudges}
        )


def _recognise(source: Image.Image) -> _Drawn | None:
    """How the source was drawn, if it is one of this renderer's drawings exactly as drawn.

    The source's metadata says how it claims to have been drawn; the claim counts only if drawing
    it again gives the same pixels, so an upload, an edit blended with its parent or a picture
    changed since (cropped, recoloured, painted over) is never taken for a drawing it is not.
    """
    claim = _claimed(source.info)
    if claim is None:
        return None
    painter = _Painter(
        parse_scene(claim.prompt), source.width, source.height, claim.seed, layout=claim.layout
    )
    for stage in painter.stages():
        stage()
    return claim if _same_picture(painter.image, _flatten(source)) else None


def _same_picture(a: Image.Image, b: Image.Image) -> bool:
    """Equal up to the rounding another machine's maths library might add."""
    difference = np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16))
    return bool(difference.mean() < 0.5 and (difference.max(axis=-1) > 16).mean() < 0.001)


def _claimed(info: dict[Any, Any]) -> _Drawn | None:
    """The drawing a picture's metadata describes: our own `info` entry, or a stored PNG's chunks."""
    try:
        own = info.get(_INFO_KEY)
        if isinstance(own, str) and len(own) <= _MAX_INFO_CHARS:
            data = json.loads(own)
            nudges = tuple((int(seed), float(amount)) for seed, amount in data["nudges"])
            return _checked(str(data["prompt"]), int(data["seed"]), int(data["layout"]), nudges)
        parameters = info.get("parameters")
        if not isinstance(parameters, str) or len(parameters) > _MAX_INFO_CHARS:
            return None
        *prompt_lines, fields = parameters.strip().split("\n")
        seed = _SEED_FIELD.search(fields)
        if seed is None or f"Model: {MODEL}" not in fields or f"Backend: {NAME}" not in fields:
            return None
        prompt = "\n".join(prompt_lines).split("\nNegative prompt:")[0].strip()
        layout_seed, nudges = int(seed.group(1)), ()
        lineage = info.get("atelier")
        if isinstance(lineage, str) and len(lineage) <= _MAX_INFO_CHARS:
            revised = json.loads(lineage).get("revised_prompt") or ""
            note = _LAYOUT_NOTE.search(revised) if isinstance(revised, str) else None
            if note is not None:
                layout_seed = int(note.group(1))
                nudges = tuple((int(v), float(a)) for v, a in _NUDGE_NOTE.findall(note.group(2)))
        return _checked(prompt, int(seed.group(1)), layout_seed, nudges)
    except (ValueError, TypeError, KeyError, AttributeError):  # json.JSONDecodeError is a ValueError
        return None


def _checked(
    prompt: str, seed: int, layout_seed: int, nudges: tuple[tuple[int, float], ...]
) -> _Drawn | None:
    seeds = [seed, layout_seed, *(v for v, _ in nudges)]
    if not all(0 <= s < 2**32 for s in seeds) or len(nudges) > _MAX_NUDGES:
        return None
    if not all(math.isfinite(a) and 0.0 <= a <= 1.0 for _, a in nudges):
        return None
    return _Drawn(prompt, seed, _Layout(layout_seed, nudges))


__all__ = ["HONEST_NOTE", "MAX_SIDE", "MIN_SIDE", "MODEL", "NAME", "RENDERER", "OfflineBackend"]
