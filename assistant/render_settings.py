"""Render settings typed into a message: steps, guidance, sampler, shape.

AUTOMATIC1111 users type settings into the message ("a cat, 40 steps", "cfg 12", "16:9"). They
are instructions for the backend, never words for the picture, so they leave the text first.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from assistant.phrase_parsing import strip_polite, vocab, without_match

_I = re.IGNORECASE


@dataclass(frozen=True)
class RenderParams:
    """Sampler settings and a shape named in a message; None = not mentioned."""

    steps: int | None = None
    guidance: float | None = None
    #: an aspect ratio (across, down), fitted into the usual area
    aspect: tuple[int, int] | None = None
    #: exact pixels the user typed ("1920x1080")
    size: tuple[int, int] | None = None
    #: "wider" (+1) or "taller" (-1): the next usual shape from the image's own
    stretch: int | None = None
    #: a sampler as typed ("euler a", "DPM++ 2M Karras"); the backend knows which it has
    sampler: str | None = None
    #: how far an edit or img2img moves from its source ("denoising strength 0.4"), 0 to 1
    strength: float | None = None

    def __bool__(self) -> bool:
        settings = (
            self.steps,
            self.guidance,
            self.aspect,
            self.size,
            self.stretch,
            self.sampler,
            self.strength,
        )
        return any(v is not None for v in settings)

    @property
    def has_shape(self) -> bool:
        return self.aspect is not None or self.size is not None or self.stretch is not None

    def shape(self, base: tuple[int, int]) -> tuple[int, int] | None:
        """The size to render: typed pixels as they are, an aspect with about `base`'s area."""
        if self.size is not None:
            return self.size
        if self.stretch is not None:
            return aspect_size(stretched_aspect(base, self.stretch), base)
        return aspect_size(self.aspect, base) if self.aspect is not None else None

    def words(self, shape: tuple[int, int] | None = None) -> str:
        """The settings as a user would type them, for replies ("40 steps, 16:9 (680×384)")."""
        parts = []
        if self.steps is not None:
            parts.append(f"{self.steps} steps")
        if self.guidance is not None:
            parts.append(f"guidance {self.guidance:g}")
        if self.sampler is not None:
            parts.append(f"sampler {self.sampler}")
        if self.strength is not None:
            parts.append(f"strength {self.strength:g}")
        if self.size is not None:
            parts.append(f"{self.size[0]}x{self.size[1]}")
        elif self.stretch is not None:
            parts.append("wider" if self.stretch > 0 else "taller")
            if shape is not None:
                parts[-1] += f" ({shape[0]}×{shape[1]})"
        elif self.aspect is not None:
            parts.append(f"{self.aspect[0]}:{self.aspect[1]}")
            if shape is not None:
                parts[-1] += f" ({shape[0]}×{shape[1]})"
        return ", ".join(parts)


def aspect_size(aspect: tuple[int, int], base: tuple[int, int]) -> tuple[int, int]:
    """`aspect` at about the area of `base`, each side a multiple of 8 (what every model takes).

    16:9 of 512² is 680×384 (1.77), 2:1 is 720×360: sides rounded to 64 made 16:9 704×384
    (1.83) and 2:1 the very same size, so two shapes asked for came out as one.
    """
    across, down = aspect
    area = base[0] * base[1]
    width = math.sqrt(area * across / down)
    height = width * down / across
    step = 8

    def side(value: float) -> int:
        return max(step, round(value / step) * step)

    ratio = across / down
    candidates = [
        (side(width), side(height)),
        (side(side(height) * ratio), side(height)),  # the height rounded first, the width fitted
        (side(width), side(side(width) / ratio)),
    ]
    return min(candidates, key=lambda c: (abs(c[0] / c[1] - ratio), abs(c[0] * c[1] - area)))


#: the shapes "wider" and "taller" step through, narrowest first
_STRETCH_STEPS: tuple[tuple[int, int], ...] = ((9, 21), (9, 16), (2, 3), (1, 1), (3, 2), (16, 9), (21, 9))


def stretched_aspect(base: tuple[int, int], direction: int) -> tuple[int, int]:
    """The next usual shape wider (direction > 0) or taller than `base`: 1:1 → 3:2 → 16:9 → 21:9."""
    ratio = base[0] / base[1]
    if direction > 0:
        wider = [a for a in _STRETCH_STEPS if a[0] / a[1] > ratio * 1.05]
        return wider[0] if wider else _STRETCH_STEPS[-1]
    taller = [a for a in _STRETCH_STEPS if a[0] / a[1] < ratio / 1.05]
    return taller[-1] if taller else _STRETCH_STEPS[0]


#: ratios people mean as a picture's shape; a list, so "10:30" (a clock) is never one
_KNOWN_RATIOS = frozenset(
    {(1, 1), (4, 3), (3, 4), (3, 2), (2, 3), (16, 9), (9, 16), (21, 9), (9, 21), (5, 4), (4, 5), (16, 10)}
    | {(10, 16), (2, 1), (1, 2), (7, 5), (5, 7)}
)
#: shape words; outside a "… orientation/format" phrase only as a segment of their own (", vertical"),
#: since "a portrait of a woman" and "a mountain landscape" are subjects
NAMED_ASPECTS: dict[str, tuple[int, int]] = {
    "square": (1, 1),
    "portrait": (2, 3),
    "vertical": (2, 3),
    "tall": (2, 3),
    "landscape": (3, 2),
    "horizontal": (3, 2),
    "wide": (16, 9),
    "widescreen": (16, 9),
    "panoramic": (21, 9),
    "panorama": (21, 9),
}
_ASPECT_WORD = r"(?P<word>" + "|".join(NAMED_ASPECTS) + r")"
_SHAPE_NOUN = r"(?:orientation|mode|format|aspect(?:\s+ratio)?|ratio|shape|version|layout|crop|size)"
_PARAM_LEAD_WORD = r"(?:\b(?:with|using|use|at|and|in|set|on)\s+)?"
_PARAM_LEAD = _PARAM_LEAD_WORD + r"(?:(?:a|an|the)\s+)?"
#: steps one climbs: "a staircase", "a flight of 30 steps", "a temple with 200 steps", "12 stone
#: steps"; not "a stone castle, 30 steps", where the steps are the sampler's
_PHYSICAL_STEPS = (
    r"\b(?:stair|ladder|flight\s+of)|\bof\s+\d+\s+steps|"
    r"\b(?:temple|pyramid|ziggurat|tower|shrine|monastery)\s+with\s+\d+\s+steps|"
    r"\b\d+\s+(?:stone|wooden|marble|concrete|worn)\s+steps|\bsteps?\s+(?:up|down|leading|to\s+the|into|of\s+the)\b"
)
_STEPS = (
    _PARAM_LEAD + r"\b(?P<n>\d{1,4})\s*(?:sampling\s+|inference\s+|denoising\s+|diffusion\s+)?steps?\b",
    _PARAM_LEAD + r"\b(?:sampling\s+)?steps?\s*(?:=|:|to|of|at)?\s*(?P<n>\d{1,4})\b",
)
_GUIDANCE = (
    # out-of-range values are read too ("cfg 100", "cfg -3"), so the limit check can refuse them
    _PARAM_LEAD
    + r"\b(?:cfg|guidance)(?:[\s_-]+scale)?\s*(?:=|:|to|of|at)?\s*(?P<n>-?\d{1,3}(?:[.,]\d{1,2}(?!\d))?)\b",
    _PARAM_LEAD + r"\b(?P<n>\d{1,3}(?:\.\d+)?)\s+(?:cfg|guidance)(?:[\s_-]+scale)?\b",
)
#: sampler names as AUTOMATIC1111 and diffusers users type them, for "use euler a" with no
#: "sampler" word; with the word ("sampler: foo") any name is taken, and the backend says
#: whether it has it
_SAMPLER_NAME = (
    r"(?:euler(?:\s+a(?:ncestral)?)?|heun|ddim|ddpm|pndm|plms|lms(?:\s+karras)?|uni[\s_-]?pc|"
    r"dpm\+\+(?:\s*2m)?(?:\s*sde)?(?:\s*karras)?|k_[a-z_]+)"
)
#: "strength 0.3", "denoising strength: 0.9", "denoise 40%" (A1111's img2img slider); read
#: with a sign and past 1 so the limit check can refuse it in words
_STRENGTH = (
    _PARAM_LEAD
    + r"\b(?:(?:denoising\s+|denoise\s+|edit\s+)?strength|denoise|denoising)\s*(?:=|:|of|to|at)?\s*"
    r"(?P<n>-?(?:\d+(?:\.\d+)?|\.\d+))(?P<percent>\s*%)?(?![\w.])"
)
_SAMPLER = (
    _PARAM_LEAD + r"\b(?:sampler|scheduler|sampling\s+method)\s*(?:=|:|to|is)?\s*"
    r"(?P<name>[a-z][\w+ -]*?)(?=\s*(?:[,;]|\.(?:\s|$)|\s+(?:and|with|please)\b|$))",
    r"\b(?:with|using|use|try)\s+(?:the\s+|a\s+)?(?P<name>[a-z][\w+ -]*?)\s+(?:sampler|scheduler)\b",
    r"\b(?:with|using|use|try)\s+(?:the\s+)?(?P<name>" + _SAMPLER_NAME + r")(?![\w+])",
    # a name alone is a setting ("Euler a"); at the start of a description it is a word of it
    r"^\s*(?P<name>" + _SAMPLER_NAME + r")\s*[.!]*\s*$",
)
_RATIO_CORE = (
    r"(?:(?:aspect(?:\s+ratio)?|ratio|--?ar)\s*(?:of\s+|=|:)?\s*)?\b(?P<a>\d{1,2})\s*:\s*(?P<b>\d{1,2})\b"
)
_RATIO_NOUN = r"\s+(?:aspect(?:\s+ratio)?|ratio|format|frame|orientation)\b"
#: "in a 16:9 format" goes whole; in "a 3:2 photo of a bridge" the article stays with "photo"
_RATIO = (
    _PARAM_LEAD + _RATIO_CORE + _RATIO_NOUN,
    _PARAM_LEAD_WORD + _RATIO_CORE + r"(?:" + _RATIO_NOUN + r")?",
)
#: "a 1920x1080 wallpaper": the article stays with the noun after the size
#: any number of digits, so "99999x99999" is refused as too large instead of left in the prompt;
#: two-digit pairs only with "px" ("64x64 px"): "a 10x10 grid", "a 4x4 truck" are the picture
_PIXELS = (
    _PARAM_LEAD_WORD + r"\b(?:(?P<w>\d{2,7})\s*(?:x|×|\*)\s*(?P<h>\d{2,7})(?<=\d{3})\b"
    r"|(?P<w2>\d{3,7})\s*(?:x|×|\*)\s*(?P<h2>\d{2})\b"
    r"|(?P<w3>\d{2})\s*(?:x|×|\*)\s*(?P<h3>\d{2})(?=\s*(?:px|pixels)\b))(?:\s*(?:px|pixels))?"
)
_NAMED_SHAPE = (
    _PARAM_LEAD + r"\b(?:in\s+)?(?:an?\s+)?" + _ASPECT_WORD + r"\s+" + _SHAPE_NOUN + r"\b"
    r"|" + _PARAM_LEAD_WORD + r"\b(?P<wide>widescreen|panoramic)\b"
)
#: where a picture will be used, which fixes its shape: "a phone wallpaper" is tall, "a desktop
#: wallpaper" wide; said the way people ask ("make it a wallpaper for my phone")
_SCREEN = r"(?:phone|mobile|iphone|android|smartphone|lock[\s-]?screen)"
_MONITOR = r"(?:desktop|laptop|monitor|computer|pc|mac|macbook)"
_BACKDROP = r"(?:wallpaper|background|backdrop)"
_DEVICE_SHAPES: tuple[tuple[str, tuple[int, int]], ...] = (
    (
        rf"{_SCREEN}\s+{_BACKDROP}|{_BACKDROP}\s+for\s+(?:my\s+|a\s+|the\s+)?{_SCREEN}|instagram\s+stor(?:y|ies)|tiktok"
        r"|(?:phone|mobile)\s+screen",
        (9, 16),
    ),
    (
        rf"{_MONITOR}\s+{_BACKDROP}|{_BACKDROP}\s+for\s+(?:my\s+|a\s+|the\s+)?{_MONITOR}|youtube\s+thumbnail",
        (16, 9),
    ),
    (r"instagram\s+post", (4, 5)),
    (r"(?:for|on)\s+(?:my\s+)?(?:instagram|insta|ig)(?:\s+feed)?", (1, 1)),
    # paper is 1:1.41; 5:7 is the nearest shape models take ("A4 poster", "US letter", "A4 landscape")
    (
        r"(?:a[3-6]|(?:us\s+)?letter)(?:\s+(?:paper|page|poster|print|sheet|size|format))?\s+(?:landscape|horizontal)",
        (7, 5),
    ),
    (r"(?:landscape|horizontal)\s+(?:a[3-6]|(?:us\s+)?letter)", (7, 5)),
    (r"a[3-6](?:\s+(?:paper|page|poster|print|sheet|size|format|portrait))?|us\s+letter", (5, 7)),
)
_DEVICE_LEAD = r"\b(?:(?:as|into|for|like)\s+)?(?:an?\s+|my\s+)?"


def device_shape(text: str) -> tuple[tuple[int, int], re.Match[str]] | None:
    """The shape a named use asks for ("a phone wallpaper" → 9:16) and where it was said."""
    for pattern, ratio in _DEVICE_SHAPES:
        if m := re.search(_DEVICE_LEAD + r"(?:" + pattern + r")\b", text, flags=_I):
            return ratio, m
    return None


#: the image a "make #2 square" names; it stays in the rest, so the planner knows which to redraw
_SHAPE_OBJECT = (
    r"(?P<obj>it|this|that|them|(?:this|that)\s+one|#\s?\d+|(?:image|picture|pic|photo|number)\s+\d+|"
    r"the\s+(?:[a-z]+\s+)?(?:one|image|picture))"
)
#: a shape word as a whole segment: ", vertical", "make it portrait", "make #2 square", "in landscape",
#: "same but in landscape"; "a landscape" on its own is a subject
_SHAPE_SEGMENT = (
    r"^(?!an?\s)(?:(?:(?:make|turn|change|switch|set|redo|redraw|render|do)\s+)?(?:"
    + _SHAPE_OBJECT
    + r"\s+)?|same\s+)?(?:but\s+)?(?:(?:to|into|in|as)\s+)?(?:an?\s+)?"
    + _ASPECT_WORD
    + r"(?:\s+(?:one|image|picture|please))?[.!]*$"
)


#: "make it wider", "same but taller", "#2 a bit wider": only as the end of a request about an
#: image; "a wider river" and "make the river wider" are about the picture's content
_STRETCH = (
    r"(?:^|\b(?:make|render|redraw|draw|do|redo|try)\s+(?:" + _SHAPE_OBJECT + r"\s+)?|(?P<obj2>#\s?\d+)\s+"
    r"|\bbut\s+|,\s*)(?:(?:a\s+)?(?:bit|little|lot|tad)\s+|much\s+|slightly\s+|even\s+)?"
    r"(?P<stretch>wider|taller)(?:\s+(?:please|one|image|picture|version|format|shape))?\s*[.!]*$"
)


#: "…wider but keep the cabin", "…taller, keep everything else": a re-render at the new shape keeps
#: the prompt and seed, so the wish to keep things is already met
_KEEP_TAIL = (
    r"(?:\s*,\s*|\s+)(?:(?:but|and)\s+)?(?:please\s+)?(?:keep|leave|don'?t\s+change)\s+"
    r"(?:the\s+|everything|it|its\s+)?[a-z\s\-]*[.!]*$"
)


def _without_keep_tail(text: str) -> str:
    # a shape request is a short message; the length bound keeps the scan linear on a pasted essay
    return re.sub(_KEEP_TAIL, "", text, flags=_I) if len(text) <= 200 else text


#: a shape word said with exact pixels ("portrait 512x768", "512x768 landscape") says the pixels again
_SHAPE_BESIDE_SIZE = (
    r"(?:in\s+)?(?:portrait|landscape|square|vertical|horizontal)(?:\s+(?:mode|format|orientation))?"
)


def _without_size(text: str, m: re.Match[str]) -> str:
    """The text without the pixel size and a shape word right beside it, which the size decides."""
    before, after = text[: m.start()], text[m.end() :]
    before = re.sub(r"\b" + _SHAPE_BESIDE_SIZE + r"\s*,?\s*(?:at\s+)?$", "", before, flags=_I)
    after = re.sub(r"^\s*,?\s*" + _SHAPE_BESIDE_SIZE + r"\b", "", after, flags=_I)
    return f"{before} {after}".strip()


def render_params(text: str, *, shape_words_alone: bool) -> tuple[RenderParams, str]:
    """The settings in `text` and the text without them.

    `shape_words_alone`: a message that is only a shape word ("portrait") sets the shape; with no
    image to redraw it is a subject instead ("landscape" alone is a picture of a landscape).
    """
    steps = guidance = None
    aspect = size = None
    # "a staircase with 12 steps", "a flight of 30 steps" are pictures of steps, not a setting
    for pattern in () if re.search(_PHYSICAL_STEPS, text, flags=_I) else _STEPS:
        if m := re.search(pattern, text, flags=_I):
            steps, text = int(m.group("n")), without_match(text, m)
            break
    for pattern in _GUIDANCE:
        if m := re.search(pattern, text, flags=_I):
            guidance, text = float(m.group("n").replace(",", ".")), without_match(text, m)  # "cfg 7,5"
            break
    strength = None
    if m := re.search(_STRENGTH, text, flags=_I):
        strength = float(m.group("n")) / (100 if m.group("percent") else 1)
        text = without_match(text, m)
    sampler = None
    for pattern in _SAMPLER:
        if m := re.search(pattern, text, flags=_I):
            sampler, text = " ".join(m.group("name").split()), without_match(text, m)
            break
    if m := re.search(_PIXELS, text, flags=_I):
        width, height = (m["w"], m["h"]) if m["w"] else (m["w2"], m["h2"]) if m["w2"] else (m["w3"], m["h3"])
        size, text = (int(width), int(height)), _without_size(text, m)
    for pattern in _RATIO:
        found = [
            m for m in re.finditer(pattern, text, flags=_I) if (int(m["a"]), int(m["b"])) in _KNOWN_RATIOS
        ]
        if found:
            aspect, text = (int(found[0]["a"]), int(found[0]["b"])), without_match(text, found[0])
            break
    stretch = None
    if (
        aspect is None
        and size is None
        and shape_words_alone
        and (m := re.search(_STRETCH, core := _without_keep_tail(strip_polite(text)), flags=_I))
    ):
        stretch = 1 if m.group("stretch").lower() == "wider" else -1
        named = m.group("obj") or m.group("obj2") or ""
        text = f"{core[: m.start()]} {named} {core[m.end() :]}"
    if aspect is None and size is None and stretch is None and (device := device_shape(text)):
        aspect, text = device[0], without_match(text, device[1])
    if aspect is None and size is None and stretch is None:
        aspect, text = _named_shape(text, shape_words_alone=shape_words_alone)
    else:
        # "make it vertical, A4", "16:9 for instagram": one shape said twice; the exact one decides
        if device := device_shape(text):
            text = without_match(text, device[1])
        _, text = _named_shape(text, shape_words_alone=shape_words_alone)
    return RenderParams(steps, guidance, aspect, size, stretch, sampler, strength), tidy_rest(text)


def _named_shape(text: str, *, shape_words_alone: bool) -> tuple[tuple[int, int] | None, str]:
    if m := re.search(_NAMED_SHAPE, text, flags=_I):
        word = (m.group("word") or m.group("wide")).lower()
        return NAMED_ASPECTS[word], without_match(text, m)
    segments = re.split(r"(,)", text)
    # a later segment of its own (", vertical"), or the whole message when there is an image to redraw
    for index in range(len(segments) - 1, -1, -2):
        if index == 0 and not shape_words_alone:
            break
        segment = segments[index]
        if m := re.match(_SHAPE_SEGMENT, strip_polite(segment), flags=_I):
            named = [f" {m.group('obj')} "] if m.group("obj") else []
            rest = "".join(segments[: max(0, index - 1)] + named + segments[index + 1 :])
            return NAMED_ASPECTS[m.group("word").lower()], rest
    return None, text


def tidy_rest(text: str) -> str:
    """What is left once settings are cut out: no dangling "with", "at", commas."""
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"\s+([,.;:!?])", r"\1", text)
    text = re.sub(r"(?:,\s*){2,}", ", ", text)
    text = re.sub(r"(?:\s*,)?\s+\b(?:with|using|at|in|and|but|on|of)\s*([.!?]*)$", r"\1", text, flags=_I)
    text = re.sub(r"^\s*(?:for|and|but|using|of)\s+", "", text, flags=_I)
    return text.strip(" ,;:-")


#: words a "re-run with other settings" message may have besides the settings and the image
RERUN_WORDS = vocab(
    """
    again regenerate regen reroll redo retry rerun remake redraw rerender render draw generate create
    try use with same but set change switch orientation format mode shape aspect ratio layout
    exactly prompt settings setting keep identical
    """
)
#: the user wants another seed, not the target's own
NEW_SEED = (
    r"\b(?:new|different|another|other|fresh|random)\s+seed\b|\bre-?roll\b|\banother\s+(?:one|try|go)\b"
)
