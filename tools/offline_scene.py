"""Turn a prompt into a small scene description the offline renderer can draw.

Parsing is a handful of keyword tables, on purpose: a person reading a prompt and the
picture should be able to predict which words were understood. Only the positive prompt is
parsed; negative prompts are never looked at, so "no snow" in a negative prompt cannot paint
snow. Prompt-writing boilerplate ("highly detailed", "depth of field", "golden ratio" …) is
removed first, because some of it contains words that would otherwise draw things ("field").
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Literal, get_args

RGB = tuple[int, int, int]
TimeOfDay = Literal["dawn", "morning", "day", "sunset", "night"]
Weather = Literal["snow", "rain", "fog"]
Composition = Literal["center", "left", "right"]
Style = Literal[
    "watercolor", "pixel art", "neon", "monochrome", "pastel", "sepia", "oil painting", "line art"
]
SubjectFamily = Literal["animal", "bird", "person"]

COLOURS: dict[str, RGB] = {
    "red": (205, 35, 35),
    "crimson": (175, 20, 45),
    "orange": (235, 125, 30),
    "yellow": (240, 210, 40),
    "gold": (215, 170, 50),
    "golden": (215, 170, 50),
    "green": (50, 150, 60),
    "emerald": (30, 160, 90),
    "teal": (0, 128, 128),
    "turquoise": (60, 200, 190),
    "cyan": (40, 200, 215),
    "blue": (40, 90, 205),
    "navy": (25, 35, 100),
    "purple": (130, 60, 175),
    "violet": (140, 80, 210),
    "lavender": (180, 160, 225),
    "magenta": (205, 40, 165),
    "pink": (240, 130, 180),
    "brown": (120, 75, 40),
    "beige": (220, 200, 160),
    "black": (25, 25, 28),
    "white": (242, 242, 242),
    "gray": (128, 128, 128),
    "grey": (128, 128, 128),
    "silver": (190, 192, 200),
}

#: Boilerplate that rewritten prompts carry; removed before any keyword is looked at.
_BOILERPLATE = (
    "highly detailed",
    "ultra detailed",
    "intricate details",
    "sharp focus",
    "soft focus",
    "depth of field",
    "soft lighting",
    "studio lighting",
    "cinematic lighting",
    "dramatic lighting",
    "volumetric lighting",
    "natural lighting",
    "rim lighting",
    "golden ratio",
    "high quality",
    "best quality",
    "trending on artstation",
    "award winning",
    "unreal engine",
    "octane render",
    "star wars",
    "five star",
    "5 star",
    "color grading",
    "colour grading",
)

#: Multi-word phrases that must win over their single words ("black and white" is a style,
#: not two colours; "golden hour" is a time, not a colour).
_PHRASES: dict[str, tuple[str, str]] = {
    "black and white": ("style", "monochrome"),
    "b w": ("style", "monochrome"),
    "pixel art": ("style", "pixel art"),
    "8 bit": ("style", "pixel art"),
    "16 bit": ("style", "pixel art"),
    "line art": ("style", "line art"),
    "ink drawing": ("style", "line art"),
    "coloring page": ("style", "line art"),
    "oil painting": ("style", "oil painting"),
    "old photo": ("style", "sepia"),
    "golden hour": ("time", "sunset"),
    "blue hour": ("time", "dawn"),
    "full moon": ("element", "moon"),
    "milky way": ("element", "stars"),
    "rule of thirds": ("composition", "left"),
}

_TIMES: dict[str, TimeOfDay] = {
    **dict.fromkeys(("dawn", "sunrise", "daybreak"), "dawn"),
    "morning": "morning",
    **dict.fromkeys(("noon", "midday", "day", "daytime", "afternoon", "daylight"), "day"),
    **dict.fromkeys(("sunset", "dusk", "evening", "twilight", "sundown"), "sunset"),
    **dict.fromkeys(
        ("night", "midnight", "nighttime", "tonight", "moonlit", "moonlight", "starry", "starlit"), "night"
    ),
}

_WEATHERS: dict[str, Weather] = {
    **dict.fromkeys(
        ("snow", "snowy", "snowing", "snowfall", "snowflakes", "snowstorm", "blizzard", "winter"), "snow"
    ),
    **dict.fromkeys(
        ("rain", "rainy", "raining", "rainfall", "storm", "stormy", "drizzle", "downpour", "thunderstorm"),
        "rain",
    ),
    **dict.fromkeys(("fog", "foggy", "mist", "misty", "haze", "hazy"), "fog"),
}

_ELEMENTS: dict[str, str] = {
    "sky": "sky",
    **dict.fromkeys(("cloud", "clouds", "cloudy", "overcast"), "clouds"),
    **dict.fromkeys(("sun", "sunny", "sunshine", "sunlight", "sunlit"), "sun"),
    **dict.fromkeys(("moon", "moonlit", "moonlight", "crescent"), "moon"),
    **dict.fromkeys(("star", "stars", "starry", "starlit", "galaxy"), "stars"),
    **dict.fromkeys(("sea", "ocean", "beach", "coast", "wave", "waves", "seaside", "shore"), "sea"),
    **dict.fromkeys(("lake", "pond", "river", "stream", "water"), "lake"),
    **dict.fromkeys(("mountain", "mountains", "peak", "peaks", "alps", "alpine", "volcano"), "mountains"),
    **dict.fromkeys(
        ("hill", "hills", "meadow", "field", "fields", "valley", "countryside", "grass", "grassland"), "hills"
    ),
    **dict.fromkeys(("forest", "forests", "woods", "woodland", "jungle", "pines"), "forest"),
    **dict.fromkeys(("tree", "trees", "pine", "oak", "palm", "palms", "birch"), "trees"),
    **dict.fromkeys(
        ("city", "skyline", "building", "buildings", "town", "skyscraper", "skyscrapers", "downtown"), "city"
    ),
    **dict.fromkeys(("house", "houses", "home", "cottage", "farmhouse", "castle", "village"), "house"),
    **dict.fromkeys(("cabin", "hut", "lodge"), "cabin"),
    **dict.fromkeys(("road", "path", "street", "highway", "trail"), "road"),
    **dict.fromkeys(
        (
            "flower",
            "flowers",
            "garden",
            "tulips",
            "roses",
            "sunflowers",
            "blossoms",
            "wildflowers",
            "daisies",
        ),
        "flowers",
    ),
}

_SUBJECTS: dict[str, tuple[str, SubjectFamily]] = {
    **dict.fromkeys(("fox", "foxes"), ("fox", "animal")),
    **dict.fromkeys(("wolf", "wolves"), ("wolf", "animal")),
    **dict.fromkeys(("cat", "cats", "kitten", "kitty"), ("cat", "animal")),
    **dict.fromkeys(("dog", "dogs", "puppy", "retriever", "corgi"), ("dog", "animal")),
    **dict.fromkeys(("horse", "horses", "pony", "stallion"), ("horse", "animal")),
    **dict.fromkeys(("deer", "stag", "doe", "elk", "reindeer", "moose"), ("deer", "animal")),
    **dict.fromkeys(("rabbit", "rabbits", "bunny", "hare"), ("rabbit", "animal")),
    **dict.fromkeys(("bear", "bears"), ("bear", "animal")),
    **dict.fromkeys(
        ("bird", "birds", "seagull", "gull", "owl", "eagle", "crow", "raven", "sparrow", "parrot", "robin"),
        ("bird", "bird"),
    ),
    **dict.fromkeys(
        ("person", "people", "figure", "traveler", "traveller", "hiker", "astronaut", "knight", "wanderer"),
        ("person", "person"),
    ),
    **dict.fromkeys(("man", "men", "boy"), ("man", "person")),
    **dict.fromkeys(("woman", "women", "girl", "lady"), ("woman", "person")),
    **dict.fromkeys(("child", "children", "kid", "kids", "toddler"), ("child", "person")),
}

_COMPOSITIONS: dict[str, Composition] = {
    **dict.fromkeys(("centered", "centred", "center", "centre", "middle", "symmetrical"), "center"),
    "left": "left",
    "right": "right",
}

_STYLES: dict[str, Style] = {
    **dict.fromkeys(("watercolor", "watercolour", "watercolors", "aquarelle"), "watercolor"),
    **dict.fromkeys(("pixel", "pixelated", "pixelart"), "pixel art"),
    **dict.fromkeys(("neon", "cyberpunk", "synthwave", "vaporwave"), "neon"),
    **dict.fromkeys(("monochrome", "grayscale", "greyscale", "noir"), "monochrome"),
    **dict.fromkeys(("pastel", "pastels"), "pastel"),
    **dict.fromkeys(("sepia", "vintage", "antique"), "sepia"),
    **dict.fromkeys(("oil", "impasto", "impressionist", "impressionism"), "oil painting"),
    **dict.fromkeys(("lineart", "sketch", "pencil", "graphite", "outline", "drawing"), "line art"),
}

#: More figures than this would crowd a sketch; extra ones are left out (and not described).
MAX_SUBJECTS = 2

#: "no snow", "without any people": how many words after a negation are not drawn.
_NEGATIONS = frozenset({"no", "without", "not", "never"})
_NEGATION_REACH = 2

#: How far after a colour word we look for the thing it colours ("red and gold flowers").
_COLOUR_REACH = 3


@dataclass(frozen=True)
class Subject:
    """The main figure; drawn as a silhouette standing on the ground (birds fly)."""

    kind: str
    family: SubjectFamily
    colour_name: str | None = None
    #: the prompt's own word ("girl", "kitten"), which may be more specific than `kind`
    word: str = ""

    @property
    def colour(self) -> RGB | None:
        return COLOURS[self.colour_name] if self.colour_name else None

    def describe(self) -> str:
        noun = self.word or self.kind
        return f"{self.colour_name} {noun}" if self.colour_name else noun


@dataclass(frozen=True)
class Scene:
    """What the offline renderer will draw; every field maps to something visible."""

    time_of_day: TimeOfDay = "day"
    weather: frozenset[Weather] = frozenset()
    elements: frozenset[str] = frozenset()
    #: element -> colour names bound to it by the prompt ("green forest" -> forest: green)
    element_colours: tuple[tuple[str, tuple[str, ...]], ...] = ()
    subjects: tuple[Subject, ...] = ()
    #: colours not attached to any noun; they tint the whole picture
    palette: tuple[str, ...] = ()
    composition: Composition | None = None
    style: Style | None = None
    #: the prompt words that were understood, in order (for notes and tests)
    understood: tuple[str, ...] = ()
    #: overall brightness from mood words: "dark, low-key" < 1 < "bright, high-key"
    exposure: float = 1.0
    #: coloured things the sketch has no drawing for ("red barn"): left out, never a tint
    not_drawn: tuple[str, ...] = ()

    def colours_for(self, element: str) -> tuple[RGB, ...]:
        for name, colour_names in self.element_colours:
            if name == element:
                return tuple(COLOURS[c] for c in colour_names)
        return ()

    def describe(self) -> str:
        """A one-line account of what gets drawn, used as the image's revised prompt."""
        parts: list[str] = [self.time_of_day]
        parts += sorted(self.weather)
        parts += [s.describe() for s in self.subjects]
        coloured = dict(self.element_colours)
        parts += [f"{' and '.join(coloured[e])} {e}" if e in coloured else e for e in sorted(self.elements)]
        if self.palette:
            parts.append(f"{' and '.join(self.palette)} palette")
        if self.composition:
            parts.append(f"{self.composition} composition")
        if self.style:
            parts.append(f"{self.style} style")
        if self.exposure < 1.0:
            parts.append("darker")
        elif self.exposure > 1.0:
            parts.append("brighter")
        return "offline sketch: " + ", ".join(parts)


def _tokens(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower().replace("&", " "))


def _strip_boilerplate(tokens: list[str]) -> list[str]:
    joined = " " + " ".join(tokens) + " "
    for phrase in _BOILERPLATE:
        joined = joined.replace(f" {phrase} ", " ")
    return joined.split()


def _build_vocabulary() -> dict[str, tuple[str, str]]:
    """One word -> (kind, value) table; earlier kinds win when a word is in two tables."""
    vocabulary: dict[str, tuple[str, str]] = {}
    tables: list[tuple[str, dict[str, str]]] = [
        ("colour", {name: name for name in COLOURS}),
        ("subject", {word: kind for word, (kind, _) in _SUBJECTS.items()}),
        ("time", dict(_TIMES)),
        ("weather", dict(_WEATHERS)),
        ("style", dict(_STYLES)),
        ("composition", dict(_COMPOSITIONS)),
        ("element", dict(_ELEMENTS)),
    ]
    for kind, table in tables:
        for word, value in table.items():
            vocabulary.setdefault(word, (kind, value))
    return vocabulary


_VOCABULARY = _build_vocabulary()
_SUBJECT_FAMILIES: dict[str, SubjectFamily] = dict(_SUBJECTS.values())
# values are looked up through tables keyed by themselves, so the Literal types stay checked
_STYLE_NAMES: dict[str, Style] = {name: name for name in get_args(Style)}


def _tag(tokens: list[str]) -> list[tuple[str, str, str]]:
    """Label every word as (kind, value, word); phrases are matched before single words.

    Words shortly after "no" / "without" are left unlabelled: "a beach, no people" has no person.
    """
    tagged: list[tuple[str, str, str]] = []
    negated_until = -1
    i = 0
    while i < len(tokens):
        if tokens[i] in _NEGATIONS:
            negated_until = i + _NEGATION_REACH
        for length in (3, 2):
            phrase = " ".join(tokens[i : i + length])
            if phrase in _PHRASES:
                kind, value = _PHRASES[phrase] if i > negated_until else ("", "")
                tagged.append((kind, value, phrase))
                i += length
                break
        else:
            kind, value = _VOCABULARY.get(tokens[i], ("", "")) if i > negated_until else ("", "")
            tagged.append((kind, value, tokens[i]))
            i += 1
    return tagged


#: Mood words that change overall brightness; an edit like "make it darker" must be visible
#: even when the time of day stays the same. Each further word compounds the effect.
_DARKER = frozenset(
    {"dark", "darker", "darkest", "dim", "dimmer", "gloomy", "moody", "shadowy", "low", "murky"}
)
_BRIGHTER = frozenset({"bright", "brighter", "brightest", "luminous", "radiant", "airy", "high"})
_KEY_WORDS = frozenset({"key"})


def _exposure(tokens: list[str]) -> float:
    """ "low-key"/"dark" darken, "high-key"/"bright" brighten; "low"/"high" count only before "key"."""
    exposure = 1.0
    for index, token in enumerate(tokens):
        followed_by_key = index + 1 < len(tokens) and tokens[index + 1] in _KEY_WORDS
        if token in ("low", "high") and not followed_by_key:
            continue
        if token in _DARKER:
            exposure *= 0.72
        elif token in _BRIGHTER:
            exposure *= 1.25
    return max(0.3, min(1.8, exposure))


def parse_scene(prompt: str) -> Scene:
    """Read the positive prompt into a `Scene`; words it does not know are simply ignored."""
    tokens = _strip_boilerplate(_tokens(prompt))
    tagged = _tag(tokens)

    time_of_day: TimeOfDay | None = None
    weather: list[Weather] = []
    elements: list[str] = []
    element_colours: dict[str, list[str]] = {}
    subjects: list[Subject] = []
    subject_colours: dict[int, str] = {}
    palette: list[str] = []
    composition: Composition | None = None
    style: Style | None = None
    understood: list[str] = []
    not_drawn: list[str] = []

    for index, (kind, value, word) in enumerate(tagged):
        if not kind:
            continue
        understood.append(word)
        if kind == "colour":
            target = _colour_target(tagged, index)
            unknown = _unknown_thing_after(tagged, index) if target is None else None
            if unknown is not None:
                not_drawn.append(f"{value} {unknown}")  # "a red barn": no barn to colour
            elif target is None:
                palette.append(value)
            elif target[0] == "subject":
                subject_colours.setdefault(target[1], value)
            else:
                element_colours.setdefault(target[2], []).append(value)
        elif kind == "time" and time_of_day is None:
            time_of_day = _TIMES[value]
        elif kind == "weather" and _WEATHERS[value] not in weather:
            weather.append(_WEATHERS[value])
        elif kind == "style" and style is None:
            style = _STYLE_NAMES[value]
        elif kind == "composition" and composition is None:
            composition = _COMPOSITIONS[value]
        elif kind == "element" and value not in elements:
            elements.append(value)
        # a word like "starry" is both a time and an element: let it be both
        if word in _ELEMENTS and kind == "time" and _ELEMENTS[word] not in elements:
            elements.append(_ELEMENTS[word])

    # phrase by phrase: "a lighthouse on a cliff, detailed environment" names a cliff, and the
    # craft words after the comma are no thing in the picture
    unnamed = (
        t for part in prompt.split(",") for t in _unknown_things(_tag(_strip_boilerplate(_tokens(part))))
    )
    for thing in dict.fromkeys(unnamed):
        if not any(entry.split()[-1] == thing for entry in not_drawn):
            not_drawn.append(thing)

    subject_tags = [(i, value, word) for i, (kind, value, word) in enumerate(tagged) if kind == "subject"]
    for tag_index, kind_name, word in subject_tags[:MAX_SUBJECTS]:
        family = _SUBJECT_FAMILIES[kind_name]
        subjects.append(Subject(kind_name, family, subject_colours.get(tag_index), word))

    # an unattached colour goes to a subject that has none ("a fox, red"), else tints the scene
    if subjects and subjects[0].colour_name is None and palette:
        subjects[0] = replace(subjects[0], colour_name=palette.pop(0))

    return Scene(
        time_of_day=time_of_day or "day",
        weather=frozenset(weather),
        elements=frozenset(elements),
        element_colours=tuple((e, tuple(c)) for e, c in element_colours.items()),
        subjects=tuple(subjects),
        palette=tuple(palette),
        composition=composition,
        style=style,
        understood=tuple(understood),
        exposure=_exposure(tokens),
        not_drawn=tuple(dict.fromkeys(not_drawn)),
    )


#: words after a colour that make it the picture's tint, not a thing's colour ("blue tones")
_TINT_WORDS = frozenset(
    {
        "tones",
        "tone",
        "hues",
        "hue",
        "tint",
        "tints",
        "light",
        "lights",
        "glow",
        "palette",
        "colors",
        "colours",
        "color",
        "colour",
        "accents",
        "highlights",
        "shades",
        "shade",
        "and",
        "or",
        "with",
        "the",
        "a",
        "an",
        "of",
        "in",
        "on",
        "at",
        "to",
        "is",
        "it",
        "all",
        "everywhere",
    }
)


def _unknown_thing_after(tagged: list[tuple[str, str, str]], index: int) -> str | None:
    """The word right after a colour when it names something the sketch cannot draw."""
    if index + 1 >= len(tagged):
        return None
    kind, _value, word = tagged[index + 1]
    if kind or word in _TINT_WORDS or not word.isalpha() or len(word) < 3:
        return None
    return word


_ARTICLES = frozenset({"a", "an", "the"})
#: words that end a noun phrase ("a lighthouse [on] a cliff")
_PHRASE_ENDS = frozenset(
    {"on", "in", "at", "with", "and", "or", "of", "by", "under", "over", "near", "from", "to", "into"}
    | {"beside", "behind", "for", "above", "below", "across", "through", "along", "around", "between"}
)
#: nouns about the picture itself, not things in it
_PICTURE_NOUNS = frozenset(
    {"photo", "picture", "image", "painting", "drawing", "illustration", "view", "scene", "shot"}
    | {"portrait", "render", "sketch", "style", "version", "background", "foreground", "bit", "lot"}
    | {"few", "couple", "little", "close", "wide", "distance", "middle", "side", "top", "bottom"}
)


def _unknown_things(tagged: list[tuple[str, str, str]]) -> list[str]:
    """Heads of "a/an/the …" phrases the sketch has no drawing for ("a lighthouse on a cliff")."""
    found: list[str] = []
    for index, (_kind, _value, word) in enumerate(tagged):
        if word not in _ARTICLES:
            continue
        end = index + 1
        while end < len(tagged) and end - index <= 3 and tagged[end][2] not in _PHRASE_ENDS | _ARTICLES:
            end += 1
            if tagged[end - 1][0]:
                break  # a word it can draw ends the phrase: "a cozy [cabin]", "the [woods], wide shot"
        if end == index + 1:
            continue
        kind, _value, head = tagged[end - 1]
        if not kind and head.isalpha() and len(head) >= 3 and head not in _PICTURE_NOUNS | _TINT_WORDS:
            found.append(head)
    return list(dict.fromkeys(found))


def _colour_target(tagged: list[tuple[str, str, str]], index: int) -> tuple[str, int, str] | None:
    """The subject or element a colour word describes: the first one within reach after it."""
    for ahead in range(index + 1, min(len(tagged), index + 1 + _COLOUR_REACH)):
        kind, value, word = tagged[ahead]
        if kind in ("subject", "element"):
            return (kind, ahead, value)
        if word in ("background", "backdrop"):
            return ("element", ahead, "sky")  # "on a blue background": the sky is the background here
        if kind in ("time", "weather", "style", "composition"):
            return None
    return None
