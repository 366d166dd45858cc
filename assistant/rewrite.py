"""Prompt rewriting, style presets and instruction edits, as deterministic templates.

Two jobs, both pure string functions so they can be tested exhaustively and replayed:

* `rewrite_prompt` turns a short idea into a fuller prompt. The user's words come first and
  unchanged; only neutral craft terms are added (composition, lighting, detail, the chosen
  style). It never adds a time of day, weather or colour the user did not say, because the
  built-in offline renderer paints those words literally and a "sunset" nobody asked for would
  show up in the picture.
* `apply_edit` produces an edited image's prompt from its PARENT's prompt: it changes exactly
  what the instruction asks (time of day, weather, colour, style, lighting, add/remove) and
  keeps every other word, so "#2 but at sunset" is still the cabin of #2.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from assistant.phrase_parsing import vocab

# --------------------------------------------------------------------------------------------
# style presets


@dataclass(frozen=True)
class StylePreset:
    """A named look: terms added to the prompt, terms added to the negative prompt.

    `aliases` are recognised anywhere in a message; `weak_aliases` only in a style phrase
    ("in X style", "as X", "into X"), because words like "photo" or "neon" often name the
    subject rather than the look.
    """

    name: str
    positive: tuple[str, ...]
    negative: tuple[str, ...]
    aliases: tuple[str, ...]
    weak_aliases: tuple[str, ...] = ()


STYLE_PRESETS: dict[str, StylePreset] = {
    p.name: p
    for p in (
        StylePreset(
            "photographic",
            ("professional photograph", "realistic textures", "50mm lens", "shallow depth of field"),
            ("cartoon", "illustration", "painting", "drawing", "cgi", "3d render"),
            ("photographic", "photorealistic", "photo-realistic", "photorealism", "realistic photo"),
            ("photo", "photograph", "photography", "realistic"),
        ),
        StylePreset(
            "cinematic",
            ("cinematic film still", "widescreen framing", "dramatic lighting", "film grain"),
            ("flat lighting", "amateur snapshot", "cartoon"),
            ("cinematic", "film still", "movie still"),
            ("film", "movie"),
        ),
        StylePreset(
            "anime",
            ("anime style", "cel shading", "clean line art", "expressive characters"),
            ("photorealistic", "photo", "3d render", "realistic skin texture"),
            ("anime", "manga"),
        ),
        StylePreset(
            "watercolor",
            ("watercolor painting", "soft pigment washes", "visible paper texture", "loose brushwork"),
            ("photo", "photorealistic", "3d render", "hard digital edges"),
            ("watercolor", "watercolour", "aquarelle"),
        ),
        StylePreset(
            "oil painting",
            ("oil painting", "visible impasto brushstrokes", "canvas texture", "classical fine art"),
            ("photo", "photorealistic", "3d render", "flat digital shading"),
            ("oil painting", "oil-painting", "oil paint", "oil on canvas"),
            ("oils", "oil", "painting", "painted"),
        ),
        StylePreset(
            "pixel art",
            ("pixel art", "16-bit sprite style", "limited palette", "crisp pixel edges"),
            ("blurry", "smooth gradients", "anti-aliasing", "photorealistic", "3d render"),
            ("pixel art", "pixel-art", "pixelart", "8-bit", "16-bit", "pixelated"),
        ),
        StylePreset(
            "3d render",
            ("3d render", "physically based materials", "global illumination", "octane render"),
            ("flat 2d", "sketch", "painting", "drawing"),
            ("3d render", "3d-render", "3d rendered", "cgi", "octane render", "blender render"),
            ("3d", "3-d"),
        ),
        StylePreset(
            "line art",
            ("line art", "clean ink linework", "minimal shading", "plain background"),
            ("photo", "photorealistic", "3d render", "messy lines", "heavy shading"),
            ("line art", "line-art", "lineart", "line drawing", "ink drawing"),
        ),
        StylePreset(
            "pencil sketch",
            ("pencil sketch", "graphite shading", "cross-hatching", "textured paper"),
            ("photo", "photorealistic", "3d render", "vivid colors"),
            ("pencil sketch", "pencil drawing", "graphite sketch", "graphite drawing", "pencil-drawn"),
            ("pencil", "graphite", "sketch"),
        ),
        StylePreset(
            "charcoal",
            ("charcoal drawing", "smudged charcoal", "bold dark strokes", "textured paper"),
            ("photo", "photorealistic", "3d render", "vivid colors"),
            ("charcoal drawing", "charcoal sketch", "charcoal-drawn"),
            ("charcoal",),
        ),
        StylePreset(
            "digital art",
            ("digital painting", "concept art", "crisp details", "artstation quality"),
            ("photo", "amateur", "low detail"),
            ("digital art", "digital painting", "concept art"),
            ("digital",),
        ),
        StylePreset(
            "fantasy art",
            ("epic fantasy illustration", "magical atmosphere", "intricate details", "painterly"),
            ("modern objects", "photo", "mundane"),
            ("fantasy art", "fantasy illustration", "high fantasy"),
            ("fantasy",),
        ),
        StylePreset(
            "cyberpunk",
            ("cyberpunk aesthetic", "neon glow", "futuristic high-tech details", "sci-fi atmosphere"),
            ("rustic", "medieval", "dull flat colors"),
            ("cyberpunk", "neon cyberpunk", "neon-noir", "synthwave"),
            ("neon", "sci-fi"),
        ),
    )
}

DEFAULT_NEGATIVE: tuple[str, ...] = (
    "blurry",
    "low quality",
    "lowres",
    "jpeg artifacts",
    "deformed",
    "distorted",
    "bad anatomy",
    "watermark",
    "text",
    "signature",
)

DETAIL_TERMS: tuple[str, ...] = ("highly detailed", "sharp focus", "high quality")


def _alias_pattern(alias: str) -> str:
    return r"[\s-]+".join(re.escape(part) for part in re.split(r"[\s-]+", alias))


def normalize_style(name: str | None) -> str | None:
    """Map a settings value or alias ("Oil_Painting", "manga") to a preset name, else None."""
    if not name:
        return None
    key = re.sub(r"[\s_\-]+", " ", name.strip().lower())
    if key in STYLE_PRESETS:
        return key
    for preset in STYLE_PRESETS.values():
        if key in (a.replace("-", " ") for a in (*preset.aliases, *preset.weak_aliases)):
            return preset.name
    return None


def detect_style(text: str) -> str | None:
    """The style preset a message asks for ("in anime style", "as pixel art"), or None.

    A style named in a style phrase beats one merely mentioned ("turn this anime still into a
    watercolor" → watercolor); among equals the first mention wins.
    """
    best: tuple[int, int, str] | None = None
    for preset in STYLE_PRESETS.values():
        for alias in (*preset.aliases, *preset.weak_aliases):
            core = _alias_pattern(alias)
            phrase = (
                r"\b(?:in|as|into|like|to|more|look)\s+(?:an?\s+|the\s+)?" + core + r"(?:[\s-]+style)?\b"
                r"|\b" + core + r"[\s-]+(?:style|look)\b"
                r"|\bstyle\s+of\s+(?:an?\s+)?" + core + r"\b"
            )
            for rank, pattern in ((0, phrase), (1, r"\b" + core + r"\b")):
                if rank == 1 and alias in preset.weak_aliases:
                    continue
                m = re.search(pattern, text, flags=re.IGNORECASE)
                if m and (best is None or (rank, m.start()) < best[:2]):
                    best = (rank, m.start(), preset.name)
    return best[2] if best else None


def _style_phrase_pattern(preset: StylePreset) -> str:
    """A style named in a phrase ("in anime style", "as a watercolor"), or bare if unmistakable."""

    def core(aliases: Iterable[str]) -> str:
        return "(?:" + "|".join(_alias_pattern(a) for a in sorted(aliases, key=len, reverse=True)) + ")"

    every = core((*preset.aliases, *preset.weak_aliases))
    return (
        r"\s*\b(?:in|as|into|like|more|look)\s+(?:an?\s+|the\s+)?" + every + r"(?:[\s-]+(?:style|look))?\b"
        r"|\s*\b" + every + r"[\s-]+(?:style|look)\b"
        r"|\s*\bstyle\s+of\s+(?:an?\s+)?" + every + r"\b"
        r"|\s*\b" + core(preset.aliases) + r"\b"
    )


def build_negative(style: str | None, text: str = "") -> str:
    """Default negative terms plus the style's, minus any the user's own text asks for.

    "a blurry photo of a ghost" must not get "blurry" as a negative, nor "a sign with the text
    OPEN" (or "a sign that says OPEN") get "text".
    """
    preset = STYLE_PRESETS.get(normalize_style(style) or "")
    terms = [*DEFAULT_NEGATIVE, *(preset.negative if preset else ())]
    return ", ".join(_dedupe(without_asked_terms(terms, text)))


#: words that ask for lettering in the picture, though the word "text" is not among them
_ASKS_FOR_TEXT = (
    r"[\"“][^\"”]+[\"”]|(?<![a-z])'[^']+'(?![a-z])|\b(?:says?|saying|reads?|reading|written|write|lettering|caption|"
    r"title|headline|slogan|typography|words?)\b|\bnumbers?\s+\d"
)


def without_asked_terms(terms: Iterable[str], text: str) -> list[str]:
    """`terms` less those the user's words ask for: a negative prompt must not forbid the request."""
    kept = [t for t in terms if not re.search(r"\b" + re.escape(t) + r"\b", text, flags=re.IGNORECASE)]
    if re.search(_ASKS_FOR_TEXT, text, flags=re.IGNORECASE):
        kept = [t for t in kept if t != "text"]
    return kept


def _dedupe(items: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    for item in items:
        key = item.strip().lower()
        if key and key not in seen:
            seen.add(key)
            out.append(item.strip())
    return out


# --------------------------------------------------------------------------------------------
# prompts written by hand for a diffusion model

#: AUTOMATIC1111 weights "(hat:1.2)", "[cat:dog:10]", LoRA tags, booru tags ("1girl"): marks of a
#: prompt tuned by hand, which a rewrite would only spoil
_HAND_TUNED_MARKS = (
    r"\([^()]+:\s*-?\d+(?:\.\d+)?\s*\)|\[[^\[\]]+:[^\[\]]+:\s*\d+(?:\.\d+)?\]|<(?:lora|lyco|hypernet):"
    r"|\b\d+(?:girl|boy|girls|boys|other)s?\b"
)
#: a tag list that opens with quality tags: "masterpiece, best quality, …"
_QUALITY_TAGS = (
    r"\s*\(*(?:masterpiece|best\s+quality|high(?:est)?\s+quality|ultra[\s-]detailed|highres|absurdres|"
    r"raw\s+photo|(?:4|8)k(?:\s+uhd)?|score_\d+(?:_up)?)\b"
)


def is_hand_tuned(idea: str) -> bool:
    """True for a prompt already written in diffusion-model tags or weights, used as typed."""
    if re.search(_HAND_TUNED_MARKS, idea, flags=re.IGNORECASE):
        return True
    return bool(re.match(_QUALITY_TAGS, idea, flags=re.IGNORECASE)) and idea.count(",") >= 3


# --------------------------------------------------------------------------------------------
# rewriting a fresh idea

#: time of day → the lighting term that matches it (and only it)
TIME_LIGHTING: dict[str, str] = {
    "night": "low-key night lighting",
    "sunset": "warm low-angle sunset light",
    "sunrise": "soft early-morning light",
    "day": "bright daylight",
}
NEUTRAL_LIGHTING = "soft natural lighting"

_TIME_WORDS: dict[str, str] = {
    "night": "night",
    "nighttime": "night",
    "night time": "night",
    "midnight": "night",
    "moonlight": "night",
    "moonlit": "night",
    "starry": "night",
    "sunset": "sunset",
    "dusk": "sunset",
    "twilight": "sunset",
    "evening": "sunset",
    "golden hour": "sunset",
    "sunrise": "sunrise",
    "dawn": "sunrise",
    "daybreak": "sunrise",
    "morning": "sunrise",
    "noon": "day",
    "midday": "day",
    "daytime": "day",
    "daylight": "day",
    "afternoon": "day",
}
_TIME_RE = r"\b(?:" + "|".join(_alias_pattern(w) for w in sorted(_TIME_WORDS, key=len, reverse=True)) + r")\b"

_PORTRAIT = r"\b(?:portrait|headshot|selfie|close-?up|face)\b"
#: graphic design rather than a scene: "a minimalist logo of a mountain", "an app icon", "a sticker"
_GRAPHIC = (
    r"\b(?:logo|logotype|icon|emblem|badge|sticker|favicon|monogram|wordmark|insignia|crest|clip\s?art)s?\b"
)
GRAPHIC_TERMS: tuple[str, ...] = (
    "plain white background",
    "centered design, flat vector style, clean shapes",
    "crisp edges",
    "high quality",
)
GRAPHIC_NEGATIVE: tuple[str, ...] = ("photo", "photorealistic", "cluttered background")
_LANDSCAPE = (
    r"\b(?:landscape|mountains?|valley|forest|woods|lake|sea|ocean|beach|desert|city|cityscape|skyline|"
    r"village|meadow|field|river|canyon|island|horizon|coast|street|town|garden|park|jungle|hills?)\b"
)
_SETTING = r"\b(?:in|on|at|under|by|near|inside|beside|above|over|among|through|across|along|behind)\s+\w"
_HAS_LIGHTING = r"\b(?:lighting|lit|backlit|candlelight|moonlight|sunlight|spotlight|lamplight|glow)\b"


def time_of_day(text: str) -> str | None:
    """Which of night/sunset/sunrise/day the text names, if any (first mention wins)."""
    m = re.search(_TIME_RE, text, flags=re.IGNORECASE)
    if not m:
        if re.search(r"\b(?:during\s+the\s+day|by\s+day|in\s+the\s+day)\b", text, flags=re.IGNORECASE):
            return "day"
        return None
    return _TIME_WORDS[re.sub(r"[\s-]+", " ", m.group(0).lower())]


def lighting_for(text: str) -> str:
    """A lighting term that agrees with the idea: neutral unless the idea names a time of day."""
    when = time_of_day(text)
    return TIME_LIGHTING[when] if when else NEUTRAL_LIGHTING


def _composition_for(idea: str) -> str:
    if re.search(_PORTRAIT, idea, flags=re.IGNORECASE):
        return "portrait framing, centered subject"
    if re.search(_LANDSCAPE, idea, flags=re.IGNORECASE):
        return "wide establishing view, layered foreground and background"
    return "balanced composition, clear focal point"


def _setting_for(idea: str) -> str:
    if re.search(
        r"\b(?:plain|white|black|blank|transparent|simple|solid)\s+(?:\w+\s+)?background\b", idea, re.I
    ):
        return "simple background"  # "a cat on a white background" is no scene
    if re.search(_SETTING, idea, flags=re.IGNORECASE) or re.search(_LANDSCAPE, idea, flags=re.IGNORECASE):
        return "detailed environment"
    return "simple background"


def clean_idea(idea: str) -> str:
    return re.sub(r"\s+", " ", idea).strip().strip(" ,;:-").rstrip(".!")


#: a change said after the idea: "a cat, but make it cyberpunk", "a cabin but at night", "a castle,
#: make it snowy"; "a small but cozy cabin" is one idea (no comma, no change word after "but")
_AFTERTHOUGHT = (
    r"(?:,\s*but\s+(?:make\s+it\s+|have\s+it\s+)?"
    r"|\s+but\s+(?=(?:make|turn|in|at|during|with|without|as|no|set|more|less)\b)(?:make\s+it\s+)?"
    r"|,\s*(?:make|turn)\s+it\s+)(?P<change>.+)$"
)


def rewrite_prompt(idea: str, style: str | None = None) -> tuple[str, str]:
    """A short idea → (detailed prompt, negative prompt); the same input gives the same output.

    Order: the user's words verbatim, setting, composition, lighting, style terms, detail terms.
    """
    idea = clean_idea(idea)
    preset = STYLE_PRESETS.get(normalize_style(style) or "")
    if not idea:
        return "", build_negative(style)
    afterthought = re.search(_AFTERTHOUGHT, idea, flags=re.IGNORECASE)
    if afterthought and afterthought.start() > 0:
        # "a cat, but make it cyberpunk": the picture is the cat, changed; not the words "but make it"
        head, change = idea[: afterthought.start()], afterthought["change"]
        prompt, negative = rewrite_prompt(head, style)
        edited = apply_edit(prompt, change)
        removed = [t for t in removed_terms(change) if t.lower() not in negative.lower()]
        return edited, ", ".join([negative, *removed]) if removed else negative
    if re.search(_GRAPHIC, idea, flags=re.IGNORECASE):
        # a logo or icon is a design on a plain ground: no scenery, lighting or depth of field
        # with a style asked for, the style's own look replaces the flat vector one
        design = (
            [GRAPHIC_TERMS[0], "centered design, clean shapes", *preset.positive] if preset else GRAPHIC_TERMS
        )
        parts = [idea, *design, *(GRAPHIC_TERMS[3:] if preset else ())]
        extra = [p for p in parts[1:] if p.lower() not in idea.lower()]
        negative = ", ".join(_dedupe([*build_negative(style, idea).split(", "), *GRAPHIC_NEGATIVE]))
        return ", ".join(_dedupe([idea, *extra])), negative
    parts = [idea, _setting_for(idea), _composition_for(idea)]
    if re.search(r"depth\s+of\s+field|bokeh|blurr?(?:ed|y)\s+background", idea, flags=re.IGNORECASE):
        # the photographer's blur: a layered, all-sharp background would argue with it
        parts = [p.replace("layered foreground and background", "subject in sharp focus") for p in parts]
    if not re.search(_HAS_LIGHTING, idea, flags=re.IGNORECASE):
        parts.append(lighting_for(idea))
    if preset:
        parts.extend(preset.positive)
    parts.extend(DETAIL_TERMS)
    lowered = idea.lower()
    extra = [p for p in parts[1:] if p.lower() not in lowered]
    return ", ".join(_dedupe([idea, *extra])), build_negative(style, idea)


def style_prompt(text: str, style: str | None = None) -> tuple[str, str]:
    """For image-to-image from an upload: the user's words plus style and detail terms only.

    Composition and setting terms are left out, since the source image already decides those.
    """
    text = clean_idea(text)
    preset = STYLE_PRESETS.get(normalize_style(style) or "")
    extra = [
        p for p in (*(preset.positive if preset else ()), *DETAIL_TERMS) if p.lower() not in text.lower()
    ]
    return ", ".join(_dedupe([text, *extra] if text else extra)), build_negative(style, text)


# --------------------------------------------------------------------------------------------
# editing a parent's prompt

COLORS = (
    "red",
    "orange",
    "yellow",
    "green",
    "blue",
    "purple",
    "violet",
    "pink",
    "brown",
    "black",
    "white",
    "gray",
    "grey",
    "golden",
    "gold",
    "silver",
    "teal",
    "cyan",
    "magenta",
    "beige",
    "turquoise",
    "crimson",
    "navy",
    "scarlet",
    "ginger",
)
#: shade words before a colour ("hot pink", "light blue"): part of the colour, never of the thing
_SHADE = r"(?:light|dark|bright|pale|deep|pastel|vivid|hot|neon|baby|sky|navy|forest|blood)"
_COLOR = r"(?:" + _SHADE + r"\s+)?(?:" + "|".join(COLORS) + r")"


@dataclass(frozen=True)
class _Weather:
    name: str
    #: words (prefixes) that name this weather in an instruction or a prompt
    words: tuple[str, ...]
    light: str
    base: str
    heavy: str
    heavier: str


WEATHER: tuple[_Weather, ...] = (
    _Weather(
        "snow",
        ("snow(?!m[ae]n|board|globe|ball)", "blizzard"),
        "light snow",
        "falling snow",
        "heavy snowfall",
        "blizzard, very heavy snowfall",
    ),
    _Weather(
        "rain",
        ("rain(?!bow|coat|forest|drop)", "drizzl", "downpour"),
        "light drizzle",
        "rain",
        "heavy rain",
        "torrential downpour",
    ),
    _Weather(
        "fog",
        ("fog", "mist(?!ake|ress|letoe|ral)", "haz(?!el|ard)"),
        "light mist",
        "fog",
        "thick fog",
        "dense impenetrable fog",
    ),
    _Weather(
        "storm",
        ("storm", "thunder", "lightning"),
        "distant storm clouds",
        "storm",
        "violent thunderstorm",
        "violent thunderstorm with lightning strikes",
    ),
    _Weather(
        "cloud", ("cloud", "overcast"), "a few clouds", "cloudy sky", "overcast sky", "heavy dark overcast"
    ),
    _Weather(
        "wind",
        ("wind(?!ow|mill|shield|ing)", "breez", "gust(?!o)"),
        "light breeze",
        "windy",
        "strong wind",
        "gale-force wind",
    ),
    _Weather(
        "sun", ("sunny", "sunnier", "sunshine"), "soft sunshine", "sunny", "bright sunshine", "blazing sun"
    ),
)

_REMOVE_CUE = (
    r"\b(?:remove|delete|erase|without|no|get\s+rid\s+of|take\s+(?:out|away)|stop|clear\s+(?:up|away)"
    r"|minus|lose)\b"
)
_LESS_CUE = r"\b(?:less|lighter|fewer|lighten|reduce|softer|gentler|a\s+(?:bit|little)\s+of)\b"
_SLIGHT_CUE = r"\b(?:a\s+(?:little\s+)?bit|a\s+little|slightly|somewhat|a\s+touch|a\s+tad)\b"
#: "snowyer" is how many people spell "snowier"
_MORE_CUE = (
    r"\b(?:more|heavier|heavy|lots\s+of|much|thicker|intense|stronger|extra|very)\b|\b\w+(?:ier|yer)\b"
)

#: mood lighting an edit may set; one at a time, replacing the neutral default
MOOD_LIGHTING: dict[str, str] = {
    "dark": "dark, low-key lighting",
    "very dark": "very dark, deep shadows, low-key lighting",
    "bright": "bright, high-key lighting",
    "very bright": "very bright, airy high-key lighting",
    "dramatic": "dramatic, high-contrast lighting",
    "moody": "moody atmospheric lighting",
    "warm": "warm lighting",
    "cool": "cool lighting",
    "soft": "soft diffused lighting",
    # "darker" on a night scene: a deeper night, keeping the night lighting it already has
    "dark night": TIME_LIGHTING["night"] + ", pitch-dark night, deep shadows",
}
_MOOD_WORDS: dict[str, str] = {
    "darker": "dark",
    "dark": "dark",
    "dimmer": "dark",
    "dim": "dark",
    "gloomier": "dark",
    "brighter": "bright",
    "bright": "bright",
    "lighter": "bright",
    "brighten": "bright",
    "darken": "dark",
    "dramatic": "dramatic",
    "moodier": "moody",
    "moody": "moody",
    "warmer": "warm",
    "cooler": "cool",
    "colder": "cool",
    "softer": "soft",
}

_LEAD = (
    r"^(?:(?:please|pls|now|ok(?:ay)?|also|and|but|then|just|so|can\s+you|could\s+you|would\s+you|"
    r"i\s+want|i'd\s+like|i\s+would\s+like|let's|lets|how\s+about|what\s+about|what\s+if|try|"
    # "a version where it's raining", "what would it look like in summer": the change is what follows
    r"(?:do|make|give\s+me|show\s+me|draw|render)\s+(?:(?:a|one|another)\s+(?:version|one|take|variant)|one|"
    r"another)\s+(?:where|in\s+which|with|that\s+(?:is|has))|what\s+would\s+it\s+look\s+like|how\s+would\s+it\s+look|"
    r"it'?s|it\s+is|it\s+was|it\s+were|there'?s|there\s+is|there\s+are)\s+)+"
)
_TRAIL = r"(?:\s+(?:please|pls|plz|thanks|thx|thank\s+you|instead|now|too|as\s+well|this\s+time|for\s+me))+$"


#: a preposition left at the end once a reference was cut out ("remove the snow from [#2]")
_DANGLING = r"(?:\s+(?:from|of|in|on|to|for|into|onto|at|with))+$"

#: words that say nothing about the picture; a clause made only of them is dropped
_EMPTY_WORDS = frozenset(
    re.findall(
        r"\S+",
        "a an the it its this that these those them one ones image picture photo pic scene make turn let "
        "have be is was were please now then so and but also just from of in on to for into at with do redo "
        "again same what if how about add put include show give look looks like feel feels seem seems",
    )
)


def _clean_clause(clause: str) -> str:
    clause = clause.strip().strip(" ,;:.!?")
    clause = re.sub(_LEAD, "", clause, flags=re.IGNORECASE)
    clause = re.sub(_TRAIL, "", clause, flags=re.IGNORECASE)
    clause = re.sub(_DANGLING, "", clause.strip(" ,;:.!?"), flags=re.IGNORECASE)
    return clause.strip().strip(" ,;:.!?")


def _has_content(clause: str) -> bool:
    return any(w not in _EMPTY_WORDS for w in re.findall(r"[a-z0-9]+", clause.lower()))


def split_instruction(instruction: str) -> list[str]:
    """One instruction may carry several changes: "at sunset, and add a moon"."""
    cue = (
        r"(?:add|remove|make|turn|change|put|set|give|replace|swap|without|no|at|in|as|with|keep|leave|"
        r"preserve|retain|don'?t|do\s+not)"
    )
    parts = re.split(
        r"[;,]|\b(?:and\s+then|then|also|plus)\b|\b(?:and|but)\b(?=\s+" + cue + r"\b)",
        instruction,
        flags=re.IGNORECASE,
    )
    return [c for c in (_clean_clause(p) for p in parts) if c]


def _tidy(text: str) -> str:
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"\s+([,.;:])", r"\1", text)
    text = re.sub(r"(?:,\s*){2,}", ", ", text)
    text = re.sub(r"\b(?:an?|the|with|and)\s*(,|$)", r"\1", text)
    text = re.sub(r"(?:,\s*){2,}", ", ", text)
    return text.strip(" ,")


def _fix_articles(text: str) -> str:
    def fix(m: re.Match[str]) -> str:
        article, word = m.group(1), m.group(2)
        want = "an" if word[0].lower() in "aeiou" else "a"
        if article[0].isupper():
            want = want.capitalize()
        return f"{want} {word}"

    return re.sub(r"\b([Aa]n?)\s+([A-Za-z]\w*)", fix, text)


#: quality tags a tag-style prompt opens with ("masterpiece, best quality, 1girl, …"): no subject
_QUALITY_TAG = (
    r"\s*\(*(?:masterpiece|best\s+quality|high\s+quality|highest\s+quality|amazing\s+quality|top\s+quality|"
    r"ultra[\s-]detailed|extremely\s+detailed|highres|absurdres|very\s+aesthetic|[48]k|uhd|hdr|score_\d+(?:_up)?)"
    r"(?::[\d.]+)?\)*\s*"
)


def _insert_after_subject(prompt: str, phrase: str, *, as_segment: bool) -> str:
    """Put new content next to the subject (the first segment), where the user's words live;
    in a tag-style prompt the subject is the first tag after the quality tags."""
    if not prompt:
        return phrase
    segments = prompt.split(",")
    at = 0
    while at < len(segments) - 1 and re.fullmatch(_QUALITY_TAG, segments[at], flags=re.IGNORECASE):
        at += 1
    head = segments[at].rstrip()
    segments[at] = f"{head}, {phrase}" if as_segment else f"{head} {phrase}"
    return ",".join(segments)


def _insert_before_details(prompt: str, phrase: str) -> str:
    """Craft terms (lighting, style) go before the closing detail terms, if there are any."""
    for term in DETAIL_TERMS:
        idx = prompt.find(f", {term}")
        if idx >= 0:
            return f"{prompt[:idx]}, {phrase}{prompt[idx:]}"
    return f"{prompt}, {phrase}" if prompt else phrase


# -- rules, each: (prompt, clause) -> new prompt, or None when the rule does not apply ---------


#: words that say a picture is drawn, not seen: a photographic style takes them out
_DRAWN_LOOK = r"\b(?:cartoon(?:ish|y)?|toon|comic(?:-book)?|animated|cel-shaded)\b"


def _edit_style(prompt: str, clause: str) -> tuple[str, str] | None:
    style = detect_style(clause)
    if not style:
        return None
    new = STYLE_PRESETS[style]
    for preset in STYLE_PRESETS.values():
        for term in preset.positive:
            prompt = re.sub(r"\s*,?\s*\b" + re.escape(term) + r"\b", "", prompt, flags=re.IGNORECASE)
        if preset.name != style:
            prompt = re.sub(_style_phrase_pattern(preset), " ", prompt, flags=re.IGNORECASE)
    if style in ("photographic", "cinematic"):
        # "more realistic" of "a cartoon dragon": a photo of a cartoon dragon is still a cartoon
        # only as a word describing a thing ("a cartoon dragon"), not a thing ("watching a cartoon on tv")
        described = _DRAWN_LOOK + r"\s+(?!(?:on|in|at|of|and|or|with|by|for|to|from|style)\b)(?=[a-z])"
        prompt = _fix_articles(re.sub(described, "", prompt, flags=re.IGNORECASE))
    prompt = _insert_before_details(_tidy(prompt), ", ".join(new.positive))
    rest = re.sub(_style_phrase_pattern(new), " ", clause, flags=re.IGNORECASE)
    rest = re.sub(
        r"^\s*(?:make|turn|render|redo|draw|paint|convert|change)?\s*(?:it|this|that)?\s*"
        r"(?:into|to|(?:look|looks|looking)(?:\s+(?:like|as\s+if))?(?:\s+(?:it\s+was|it's))?|like|as)?\s*(?:an?)?\s*"
        # "more cinematic", "a bit more anime": the style is either there or not
        r"(?:(?:(?:a\s+(?:little|bit|lot)|even|much|way)\s+)?more|very|really|extra)?\s*"
        # "a watercolor painting": the kind of picture the style already is
        r"(?:painting|drawing|illustration|picture|image|version|piece)?\s*$",
        "",
        rest,
        flags=re.IGNORECASE,
    )
    return _tidy(prompt), _clean_clause(rest)


_TIME_PHRASE = {
    "night": "at night",
    "nighttime": "at night",
    "night time": "at night",
    "midnight": "at midnight",
    "moonlight": "by moonlight",
    "sunset": "at sunset",
    "dusk": "at dusk",
    "twilight": "at twilight",
    "golden hour": "at golden hour",
    "evening": "in the evening",
    "sunrise": "at sunrise",
    "dawn": "at dawn",
    "daybreak": "at daybreak",
    "morning": "in the morning",
    "noon": "at noon",
    "midday": "at midday",
    "daytime": "during the day",
    "daylight": "in daylight",
    "afternoon": "in the afternoon",
    "day": "during the day",
}
_TIME_KEYS = r"(?:" + "|".join(_alias_pattern(k) for k in sorted(_TIME_PHRASE, key=len, reverse=True)) + r")"
#: a time phrase in a prompt: prepositional ("at night") or bare ("a night sky")
_TIME_IN_PROMPT = (
    r"\b(?P<prep>(?:at|by|during|in)\s+(?:the\s+)?)?(?P<word>night(?:time)?|midnight|moonlight|sunset|dusk|"
    r"twilight|golden[\s-]hour|evening|sunrise|dawn|daybreak|morning|noon|midday|daytime|daylight|afternoon"
    r"|(?<=during the )day)\b"
)


_PLACEHOLDER = "\x00"


def _replace_mentions(prompt: str, found: Sequence[re.Match[str]], replacement: str) -> str:
    """The first mention becomes `replacement` and the others go: a picture has one time of
    day, one season."""
    pieces = [prompt[: found[0].start()], replacement]
    pos = found[0].end()
    for extra in found[1:]:
        pieces.append(prompt[pos : extra.start()])
        pos = extra.end()
    pieces.append(prompt[pos:])
    return "".join(pieces)


def _edit_time(prompt: str, clause: str) -> tuple[str, str] | None:
    m = re.search(r"\b" + _TIME_KEYS + r"\b", clause, flags=re.IGNORECASE)
    if not m:
        return None
    key = re.sub(r"[\s-]+", " ", m.group(0).lower())
    if key == "day" and not re.search(
        r"\b(?:during\s+the\s+day|by\s+day|make\s+it\s+day|day\s*time|in\s+the\s+day|^day$)", clause, re.I
    ):
        return None
    phrase = _TIME_PHRASE[key]
    bare = phrase.split()[-1] if key not in ("golden hour",) else "golden hour"
    when = _TIME_WORDS.get(key, "day")

    # set the old lighting term aside first: its words ("night lighting") are not a time phrase
    old_light = next((t for t in (*TIME_LIGHTING.values(), NEUTRAL_LIGHTING) if t in prompt), None)
    if old_light:
        prompt = prompt.replace(old_light, _PLACEHOLDER, 1)
    found = list(re.finditer(_TIME_IN_PROMPT, prompt, flags=re.IGNORECASE))
    if found:
        first = found[0]
        prompt = _replace_mentions(prompt, found, phrase if first.group("prep") else bare)
    else:
        prompt = _insert_after_subject(prompt, phrase, as_segment=False)
    if old_light:
        prompt = prompt.replace(_PLACEHOLDER, TIME_LIGHTING[when])
    rest = clause[: m.start()] + " " + clause[m.end() :]
    rest = re.sub(
        r"\b(?:at|by|during|in|the|make\s+it|turn\s+it|change\s+it\s+to|set\s+it)\b", " ", rest, flags=re.I
    )
    return _tidy(_dedupe_segments(prompt)), _clean_clause(rest)


_SEASONS = {
    "winter": "winter",
    "wintry": "winter",
    "wintery": "winter",
    "summer": "summer",
    "summery": "summer",
    "spring": "spring",
    "springtime": "spring",
    "autumn": "autumn",
    "autumnal": "autumn",
    "fall": "autumn",
    "wintertime": "winter",
    "summertime": "summer",
}
#: a season asked for: "make it summer", "in autumn", "wintry"; "fall" only where it can be nothing else
_SEASON_ASKED = (
    r"\b(?:winter(?:time)?|wintr?e?y|summer(?:time)?|summery|spring(?:time)?|autumn(?:al)?)\b"
    r"|(?:\b(?:in|during)\s+(?:the\s+)?|^(?:make\s+it\s+|turn\s+it\s+|set\s+it\s+in\s+)?)fall$"
    r"|\b(?:in|during)\s+(?:the\s+)?fall\b"
)
#: a season in a prompt, with its preposition when it has one ("in winter", "a winter cabin")
_SEASON_IN_PROMPT = (
    r"(?P<prep>\b(?:in|during)\s+(?:the\s+)?)?\b(?:winter(?:time)?|summer(?:time)?|autumn|springtime)\b"
    r"|\b(?:in|during)\s+(?:the\s+)?(?:spring|fall)\b"
)


#: "autumn colors", "fall tones", "a winter palette": the season's colours, not a season
_SEASON_PALETTE = (
    r"\b(?P<season>autumn(?:al)?|fall|winter|wintry|summer(?:y)?|spring)\s+"
    r"(?:colou?rs?|tones?|palette|hues?|shades?)\b"
)


def _edit_season(prompt: str, clause: str) -> tuple[str, str] | None:
    """ "make it summer" of "a lake in winter" is a lake in summer, not "in winter, summer"."""
    palette = re.search(_SEASON_PALETTE, clause, flags=re.IGNORECASE)
    if palette:
        season = {"fall": "autumn", "autumnal": "autumn", "wintry": "winter", "summery": "summer"}.get(
            palette["season"].lower(), palette["season"].lower()
        )
        left = re.sub(
            r"^(?:make|turn|give|use|with|in)?(?:\s+(?:it|them|this|that|everything))?(?:\s+an?)?\s*$",
            "",
            clause[: palette.start()].strip(),
            flags=re.IGNORECASE,
        )
        rest = f"{left} {clause[palette.end() :]}".strip()
        return _insert_before_details(prompt, f"{season} color palette"), rest
    m = re.search(_SEASON_ASKED, clause, flags=re.IGNORECASE)
    if not m:
        return None
    word = re.search(r"[a-z]+$", m.group(0).lower())
    assert word is not None
    season = _SEASONS[word.group(0)]
    found = list(re.finditer(_SEASON_IN_PROMPT, prompt, flags=re.IGNORECASE))
    if found:
        first = found[0]
        with_prep = first.group(0).lower().startswith(("in ", "during "))
        prompt = _replace_mentions(prompt, found, f"in {season}" if with_prep else season)
    else:
        prompt = _insert_after_subject(prompt, f"in {season}", as_segment=False)
    if season != "winter":
        # "make it autumn" on a snowy scene: autumn, not autumn under a blizzard
        snow = next(w for w in WEATHER if w.name == "snow")
        for hit in reversed(_weather_in(prompt, snow)):
            prompt = prompt[: hit.start()] + prompt[hit.end() :]
        prompt = prompt.replace("blizzard, ", "")
    rest = clause[: m.start()] + " " + clause[m.end() :]
    rest = re.sub(r"\b(?:in|during|the|make\s+it|turn\s+it|set\s+it|season)\b", " ", rest, flags=re.I)
    return _tidy(_dedupe_segments(prompt)), _clean_clause(rest)


def _weather_in(prompt: str, w: _Weather) -> list[re.Match[str]]:
    stems = "|".join(w.words)
    pattern = (
        r"(?:\b(?:in|under|with|during|covered\s+(?:in|with))\s+(?:the\s+|a\s+)?)?"
        r"(?:\b(?:very|heavy|light|falling|fresh|thick|deep|dense|distant|violent|strong|soft|bright|"
        r"blazing|torrential|impenetrable|gale-force)\s+)*"
        r"\b(?:" + stems + r")[\w-]*(?:\s+(?:clouds|sky|conditions|strikes))?"
    )
    return list(re.finditer(pattern, prompt, flags=re.IGNORECASE))


def _weather_named(text: str) -> bool:
    return any(re.search(r"\b(?:" + "|".join(w.words) + r")", text, flags=re.IGNORECASE) for w in WEATHER)


def _edit_weather(prompt: str, clause: str) -> tuple[str, str] | None:
    if re.fullmatch(_REPLACE, clause, flags=re.IGNORECASE):
        return None  # "replace the snow with rain" is a swap, which the replace rule makes
    for w in WEATHER:
        stems = "|".join(w.words)
        m = re.search(r"\b(?:" + stems + r")[\w-]*", clause, flags=re.IGNORECASE)
        if not m:
            continue
        if w.name == "sun" and re.search(r"\bsunset|sunrise\b", clause, re.I):
            continue
        present = _weather_in(prompt, w)
        added = [p for p in present if p.group(0).strip().lower() in {w.light, w.base, w.heavy, w.heavier}]
        if re.search(_REMOVE_CUE, clause, flags=re.IGNORECASE):
            for hit in reversed(present):
                prompt = prompt[: hit.start()] + prompt[hit.end() :]
            prompt = prompt.replace("blizzard, ", "")
        elif re.search(_LESS_CUE, clause, flags=re.IGNORECASE):
            # "less snow" where there is none changes nothing: it must not bring snow in
            if present:
                target = added[0] if added else present[0]
                # "a fox in the snow" → "a fox in light snow": the preposition still ties it to the subject
                lead = re.match(r"(?:in|under|with|during|covered\s+(?:in|with))\s+", target.group(0), re.I)
                light = (lead.group(0) if lead else "") + w.light
                prompt = prompt[: target.start()] + light + prompt[target.end() :]
        elif w.heavier in prompt:
            pass  # already as heavy as it gets: "make it snowy" after a blizzard adds no second snow term
        else:
            more = bool(present) or re.search(_MORE_CUE, clause, flags=re.IGNORECASE) is not None
            levels = (w.light, w.base, w.heavy)
            said = [p.group(0).strip().lower() for p in added]
            level = max((levels.index(t) for t in said if t in levels), default=-1)
            if re.search(_SLIGHT_CUE, clause, flags=re.IGNORECASE):
                # "a bit sunnier": one step up from what is there, not straight to the heaviest
                new = levels[min(level + 1, len(levels) - 1)]
            elif any(p.group(0).strip().lower() == w.heavy for p in present):
                new = w.heavier if re.search(_MORE_CUE, clause, flags=re.IGNORECASE) else w.heavy
            else:
                new = w.heavy if more else w.base
            if added:
                target = added[0]
                prompt = prompt[: target.start()] + new + prompt[target.end() :]
            else:
                prompt = _insert_after_subject(prompt, new, as_segment=True)
            if w.name == "sun" and TIME_LIGHTING["night"] in prompt:
                # sunshine at night is no picture: "sunnier" on a night scene makes it day
                prompt = _night_to_day(prompt)
        rest = clause[: m.start()] + " " + clause[m.end() :]
        rest = re.sub(
            _REMOVE_CUE
            + "|"
            + _LESS_CUE
            + "|"
            + _MORE_CUE
            + r"|\b(?:make|it|the|add|some|a|little|bit|slightly|let\s+it|have)\b",
            " ",
            rest,
            flags=re.IGNORECASE,
        )
        rest = _clean_clause(rest)
        if re.fullmatch(r"[a-z\-]+", rest, flags=re.IGNORECASE) and re.search(
            rf"\b{re.escape(rest)}\b", prompt, re.I
        ):
            rest = ""  # "make the woods snowy": the woods are already in the picture
        return _tidy(_dedupe_segments(prompt)), rest
    return None


def _night_to_day(prompt: str) -> str:
    changed = _edit_time(prompt, "during the day")
    return changed[0] if changed else prompt


#: the time-of-day lighting each mood cannot sit beside: "bright" on "low-key night lighting"
_CLASHING_LIGHT: dict[str, str] = {
    "bright": TIME_LIGHTING["night"],
    "very bright": TIME_LIGHTING["night"],
    "dark": TIME_LIGHTING["day"],
    "very dark": TIME_LIGHTING["day"],
}


def _edit_lighting(prompt: str, clause: str) -> tuple[str, str] | None:
    words = "|".join(sorted(_MOOD_WORDS, key=len, reverse=True))
    m = re.fullmatch(
        r"(?:make\s+|turn\s+)?(?:it|this|that|the\s+(?:image|picture|scene|photo|lighting|light|mood))?\s*"
        r"(?:(?:a\s+(?:bit|little)|slightly|much|even|more|very|a\s+lot)\s+)*(?P<mood>" + words + r")"
        r"(?:\s+(?:lighting|light|mood|atmosphere))?(?:\s+(?:it|the\s+(?:image|picture|scene)))?",
        clause.strip(),
        flags=re.IGNORECASE,
    ) or re.fullmatch(
        r"(?:use\s+|with\s+|give\s+it\s+)?(?:more\s+)?(?P<mood>" + words + r")\s+(?:lighting|light)",
        clause.strip(),
        flags=re.IGNORECASE,
    )
    if not m:
        return None
    mood = _MOOD_WORDS[m.group("mood").lower()]
    current = next((k for k, v in MOOD_LIGHTING.items() if v in prompt), None)
    if mood == "dark" and (current == "dark night" or (current is None and TIME_LIGHTING["night"] in prompt)):
        mood = "dark night"  # not "low-key night lighting, dark, low-key lighting"
    elif current in (mood, f"very {mood}") and f"very {mood}" in MOOD_LIGHTING:
        mood = f"very {mood}"  # "darker" again after "very dark" stays very dark, never lighter
    new = MOOD_LIGHTING[mood]
    if current == "dark night" and mood in ("bright", "very bright"):
        new = TIME_LIGHTING["night"]  # a step back from pitch-dark: night as it was, not daylight
    if current:
        prompt = prompt.replace(MOOD_LIGHTING[current], new, 1)
    elif _CLASHING_LIGHT.get(mood, "\x00") in prompt:
        # "make it brighter" at night: a brightly lit night, not two lighting terms that disagree
        prompt = prompt.replace(_CLASHING_LIGHT[mood], new, 1)
    elif NEUTRAL_LIGHTING in prompt:
        prompt = prompt.replace(NEUTRAL_LIGHTING, new, 1)
    else:
        prompt = _insert_before_details(prompt, new)
    return prompt, ""


def _edit_color(prompt: str, clause: str) -> tuple[str, str] | None:
    obj_re = (
        r"(?:the\s+|its\s+|his\s+|her\s+)?(?:[a-z][a-z\-]*'s\s+)?(?P<obj>[a-z][a-z\-]*(?:\s+(?!to\b|into\b|be\b|of\b|an?\b|the\b|"
        + _SHADE
        + r"\s)[a-z][a-z\-]*)?)"
        r"(?:'s)?(?:\s+colou?r)?(?:\s+of)?"  # "the sky of #1 purple" arrives as "the sky of purple"
    )
    m = (
        # "make #1 pink" / "#1 but pink" arrive as "make pink" / "pink": the whole picture
        re.fullmatch(
            r"(?:(?:make|turn|paint|colou?r|recolou?r|dye)\s+)?(?:(?:all|completely|entirely)\s+)?(?:in\s+)?"
            r"(?P<color>" + _COLOR + r")(?P<obj>)(?:\s+(?:tones?|colou?rs?|all\s+over))?",
            clause,
            flags=re.IGNORECASE,
        )
        or re.fullmatch(
            r"(?:make|turn|paint|colou?r|recolou?r|change|dye)\s+"
            + obj_re
            + r"\s+(?:to\s+|into\s+)?(?:be\s+)?(?:an?\s+)?"
            r"(?P<color>" + _COLOR + r")(?:\s+(?:colou?r|shade|hue|tone))?",
            clause,
            flags=re.IGNORECASE,
        )
        or re.fullmatch(
            r"change\s+the\s+colou?r\s+of\s+" + obj_re + r"\s+to\s+(?P<color>" + _COLOR + r")",
            clause,
            flags=re.IGNORECASE,
        )
        or re.fullmatch(
            r"(?:an?\s+|the\s+)?(?P<color>" + _COLOR + r")\s+(?P<obj>[a-z][a-z\-]*)",
            clause,
            flags=re.IGNORECASE,
        )
    )
    if not m:
        return None
    color = m.group("color").lower()
    obj = m.group("obj").lower() or "it"
    if obj in ("it", "this", "that", "everything", "the image", "image", "picture", "scene"):
        # one cast at a time: "make it green" after "make it blue" is green, not blue and green
        others = re.sub(
            r"\s*,?\s*\b(?:strongly\s+)?dominant\s+[a-z\s\-]{2,30}?\s+tones\b", "", prompt, flags=re.I
        )
        return _insert_before_details(others, f"dominant {color} tones"), ""
    head = obj.split()[-1]
    noun = re.search(r"\b" + re.escape(head) + r"(?:e?s)?\b", prompt, flags=re.IGNORECASE)
    if not noun:
        return _insert_after_subject(prompt, f"{color} {obj}", as_segment=True), ""
    before = prompt[: noun.start()]
    # a colour up to two words before the noun is the one to swap ("a red fluffy fox")
    old = None
    for c in re.finditer(
        r"\b" + _COLOR + r"(?:\s+and\s+" + _COLOR + r")?\s+(?=(?:[a-z\-]+\s+)?$)", before, re.I
    ):
        old = c
    if old:
        prompt = prompt[: old.start()] + color + " " + prompt[old.end() :]
    else:
        prompt = prompt[: noun.start()] + color + " " + prompt[noun.start() :]
    return _fix_articles(prompt), ""


#: "bluer", "redder": the comparative of a colour, for "make it bluer"
_COLOR_COMPARATIVES: dict[str, str] = {
    "bluer": "blue",
    "redder": "red",
    "greener": "green",
    "yellower": "yellow",
    "pinker": "pink",
    "browner": "brown",
    "oranger": "orange",
    "purpler": "purple",
    "grayer": "gray",
    "greyer": "grey",
    "whiter": "white",
    "blacker": "black",
}
#: "more blue", "make it bluer", "a bit more red tones": the whole picture pushed towards a colour
_MORE_COLOR = (
    # "make #1 bluer" reaches here as "make bluer": the reference is gone, the verb stays
    r"(?:(?:make|turn)\s+(?:(?:it|this|that|everything|the\s+(?:image|picture|scene|photo))\s+)?)?"
    r"(?:(?:a\s+(?:bit|little|lot)|slightly|much|even|way|far)\s+)?"
    r"(?:more\s+(?P<color>"
    + "|".join(COLORS)
    + r")|(?P<comparative>"
    + "|".join(_COLOR_COMPARATIVES)
    + r"))(?:\s+(?:tones?|tints?|hues?|colou?rs?|overall))?"
)


def _edit_more_color(prompt: str, clause: str) -> tuple[str, str] | None:
    """ "more blue" / "bluer": a colour cast over the whole picture, as "make it blue" gives.

    The words "bluer" or "more blue" mean nothing to an image model once they stand in a prompt
    with no image to compare against; "dominant blue tones" does. Asked twice, the cast gets
    stronger once, so a second "bluer" still changes the prompt.
    """
    m = re.fullmatch(_MORE_COLOR, clause.strip(), flags=re.IGNORECASE)
    if not m:
        return None
    color = (m.group("color") or _COLOR_COMPARATIVES[m.group("comparative").lower()]).lower()
    tones, stronger = f"dominant {color} tones", f"strongly dominant {color} tones"
    if stronger in prompt:
        return prompt, ""
    if tones in prompt:
        return prompt.replace(tones, stronger, 1), ""
    return _insert_before_details(prompt, tones), ""


_SMALL_SIDE = ("tiny", "small", "little")
_BIG_SIDE = ("big", "large", "huge", "giant", "enormous")
_SIZE_ADJECTIVES = (*_SMALL_SIDE, *_BIG_SIDE)
#: each size adjective one step bigger / smaller; "" drops the adjective (back to normal size)
_BIGGER = {"tiny": "small", "small": "", "little": "", "big": "huge", "large": "huge"}
_SMALLER = {"huge": "large", "giant": "large", "enormous": "large", "big": "", "large": "", "small": "tiny"}
_SIZE_DIRECTION = (
    r"(?P<up>bigger|larger|huger|taller|more\s+(?:prominent|visible|noticeable)|stand\s+out(?:\s+more)?)"
    r"|(?P<down>smaller|tinier|shorter|less\s+(?:prominent|visible|noticeable))"
)
#: "make the fox bigger", "the fox a bit larger", "enlarge the fox", "shrink the boat"
_RESIZE_THING = (
    r"(?:(?:make|have|let|get)\s+)?(?:the|its|his|her|their)\s+(?P<obj>[a-z][a-z\-]*(?:\s+[a-z][a-z\-]*)?)"
    r"\s+(?:(?:a\s+(?:bit|little|lot)|slightly|much|even|way|far)\s+)?(?:" + _SIZE_DIRECTION + r")"
    r"(?:\s+in\s+the\s+(?:frame|picture|image|scene|shot|photo))?"
    r"|(?P<verb>enlarge|shrink)\s+(?:the|its|his|her|their)\s+(?P<obj2>[a-z][a-z\-]*(?:\s+[a-z][a-z\-]*)?)"
)
#: the segments each direction adds ({obj}: the thing as named, {head}: its last word), so the
#: framing says it as well as the adjective
_BIGGER_SEGMENTS = ("close-up of the {obj}", "{head} prominent in the foreground")
_SMALLER_SEGMENTS = ("the {obj} small in the distance", "wide shot")


#: "zoom out", "zoom in on the fox", "pull back a bit", "get closer": the framing, in words models know
_ZOOM = (
    r"(?:zoom(?:\s+(?P<dz>in|out))?|(?:pull|move|step|get|come)\s+(?P<dir>out|in|back|closer|away|farther|further)"
    r"|(?P<dir2>closer|farther\s+away|further\s+away)"
    # "show more of the forest", "a wider shot": the same picture seen from farther away
    r"|(?P<more>show\s+(?:me\s+)?more(?:\s+of\s+(?:the\s+|its\s+)?[a-z][a-z\s\-]*)?|(?:an?\s+)?wider\s+(?:shot|view|angle|framing)))"
    r"(?:\s+(?:a\s+(?:bit|little|lot)|slightly|more|much))?(?:\s+(?:on|to(?:wards)?)\s+(?:the\s+)?(?P<obj>[a-z][a-z\s\-]*))?"
)
_ZOOMED_OUT = ("wide shot", "seen from farther away")
_ZOOMED_IN = ("close-up",)
#: framing a close-up contradicts: a new idea's landscape composition says the view is wide
_WIDE_FRAMING = frozenset({"wide establishing view", *_ZOOMED_OUT})


def _closer(prompt: str, framing: str) -> str:
    """The close framing after the subject, with the wide framing it replaces gone."""
    kept = [seg.strip() for seg in prompt.split(",") if seg.strip() and seg.strip() not in _WIDE_FRAMING]
    return _insert_after_subject(", ".join(kept), framing, as_segment=True)


def _edit_zoom(prompt: str, clause: str) -> tuple[str, str] | None:
    """ "zoom out" is framing, never the words "zoom out" in the picture; the opposite framing goes."""
    m = re.fullmatch(_ZOOM, clause.strip(), flags=re.IGNORECASE)
    if not m:
        return None
    # a clause cleaner may drop a trailing "in": a bare "zoom" is zooming in
    direction = (
        "out" if m.group("more") else (m.group("dz") or m.group("dir") or m.group("dir2") or "in").lower()
    )
    closer = direction in ("in", "closer")
    framing = (
        [f"close-up of the {m.group('obj').strip()}"]
        if closer and m.group("obj")
        else list(_ZOOMED_IN if closer else _ZOOMED_OUT)
    )
    opposite = (*_ZOOMED_OUT,) if closer else (*_ZOOMED_IN,)
    segments = [
        seg.strip()
        for seg in prompt.split(",")
        if seg.strip() and seg.strip() not in opposite and not seg.strip().startswith("close-up of")
    ]
    if closer:
        return _closer(", ".join(segments), ", ".join(framing)), ""
    segments = [seg for seg in segments if seg not in _BIGGER_SEGMENTS]
    return _insert_after_subject(", ".join(segments), ", ".join(framing), as_segment=True), ""


def _edit_thing_size(prompt: str, clause: str) -> tuple[str, str] | None:
    """ "make the fox bigger": the thing drawn larger (or smaller) in the frame, not the words.

    A size adjective goes before the thing's name in the subject, one step up or down a small
    ladder (small → normal → large → huge), and a framing segment says the same in words models
    know ("close-up of the fox", "wide shot"); the opposite direction's segment goes, so
    bigger-then-smaller leaves no contradiction. A thing the prompt does not name yet is added.
    """
    m = re.fullmatch(_RESIZE_THING, clause.strip(), flags=re.IGNORECASE)
    if not m:
        return None
    obj = (m.group("obj") or m.group("obj2")).lower()
    if obj in ("image", "picture", "photo", "pic", "scene", "whole", "whole image", "whole picture"):
        return None  # the whole image bigger is an upscale, which the planner handles
    bigger = bool(m.group("up")) or (m.group("verb") or "").lower() == "enlarge"
    head = obj.split()[-1]
    up = [s.format(obj=obj, head=head) for s in _BIGGER_SEGMENTS]
    down = [s.format(obj=obj, head=head) for s in _SMALLER_SEGMENTS]
    segments = [s.strip() for s in prompt.split(",") if s.strip()]
    # bigger after smaller (or the reverse) is a step back towards the original framing
    undoing = any(s in (down if bigger else up) for s in segments)
    prompt = ", ".join(s for s in segments if s not in (*up, *down))
    noun = re.search(r"\b" + re.escape(head) + r"(?:e?s)?\b", prompt, flags=re.IGNORECASE)
    if not noun:
        size = "large" if bigger else "small"
        thing = f"{size} {obj}" if re.search(r"[^s]s$", obj) else f"a {size} {obj}"
        return _fix_articles(_insert_after_subject(prompt, thing, as_segment=True)), ""
    before, after = prompt[: noun.start()], prompt[noun.start() :]
    # a size word up to two words before the noun is the one to step ("a small red fox")
    sized = None
    for s in re.finditer(
        r"\b(?P<size>" + "|".join(_SIZE_ADJECTIVES) + r")\s+(?=(?:[a-z\-]+\s+)?$)", before, re.I
    ):
        sized = s
    if sized is not None:
        ladder = _BIGGER if bigger else _SMALLER
        step = ladder.get(sized.group("size").lower(), sized.group("size"))
        before = before[: sized.start()] + (f"{step} " if step else "") + before[sized.end() :]
        # still on the other side of normal ("tiny" → "small"): the framing of that side stays off
        undoing = undoing or step in (_SMALL_SIDE if bigger else _BIG_SIDE)
    else:
        # after the article, before any colour: "a red fox" → "a large red fox"
        article = re.search(r"\b(?:an?|the|some|one)\s+(?=(?:[a-z\-]+\s+){0,2}$)", before, re.I)
        at = article.end() if article else len(before)
        before = before[:at] + ("large " if bigger else "small ") + before[at:]
    prompt = _fix_articles(before + after)
    if undoing:
        return prompt, ""
    if bigger:
        return _closer(prompt, ", ".join(up)), ""
    return _insert_after_subject(prompt, ", ".join(down), as_segment=True), ""


#: "less red", "make it less blue", "not so blue", "fewer trees": turn something down, never add it
_LESS_OF = (
    r"(?:make\s+(?P<obj>.+?)\s+)?(?:(?:a\s+(?:bit|little|lot)|slightly|much|way|far|even)\s+)?"
    r"(?:less|fewer|not\s+(?:so|as|too)|reduce(?:\s+the)?|tone\s+down(?:\s+the)?)\s+(?:of\s+)?(?:the\s+)?"
    r"(?P<what>[a-z][a-z\-]*(?:\s+[a-z][a-z\-]*)?)"
)
#: words that follow the thing turned down without naming it ("less red tones")
_LESS_TRAIL = frozenset({"tones", "tone", "colour", "color", "colours", "colors", "please", "in", "it"})


def reduced_target(clause: str) -> str | None:
    """What "less X" / "not so X" turns down ("less red" → "red"), else None."""
    m = re.fullmatch(_LESS_OF, _clean_clause(clause), flags=re.IGNORECASE)
    if m is None:
        return None
    words = [w for w in m.group("what").lower().split() if w not in _LESS_TRAIL]
    return " ".join(words) or None


def _names_it(segment: str, what: str) -> bool:
    words = re.findall(r"[a-z][a-z\-]*", segment.lower())
    wanted = [_stem(w) for w in what.split()]
    return any(any(word.startswith(stem) for word in words) for stem in wanted if stem)


#: looks said as adjectives of the subject, which "less …" takes out of the subject too
_LOOK_WORDS = r"\b(?:cartoon(?:ish|y)?|cute|kawaii|chibi|scary|creepy|spooky|gloomy)\b"


def _stem(word: str) -> str:
    """ "snowy"/"snowier" → "snow", "reds" → "red": enough to find a term in a prompt segment."""
    for suffix in ("iest", "ier", "yer", "ies", "y", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def _edit_less(prompt: str, clause: str) -> tuple[str, str] | None:
    """Drop the segments an earlier edit or rewrite added for the thing ("dominant red tones").

    The subject segment keeps its words ("a red barn" stays a red barn); the planner puts the
    thing into the negative prompt as well, where the backend takes one. Nothing is ever added,
    so "less blue" can't make the picture bluer.
    """
    what = reduced_target(clause)
    if what is None:
        return None
    if re.fullmatch(_LOOK_WORDS, what, flags=re.IGNORECASE):
        # "less cartoony", "less cute": how the subject looks is in its own words ("a cute puppy")
        family = what[:4].lower()
        prompt = _tidy(
            re.sub(
                _LOOK_WORDS + r"\s*",
                lambda m: "" if m.group(0).lower().startswith(family) else m.group(0),
                prompt,
                flags=re.IGNORECASE,
            )
        )
    head, _, rest = prompt.partition(",")
    kept = [seg for seg in rest.split(",") if seg.strip() and not _names_it(seg, what)]
    return ", ".join([head.strip(), *(seg.strip() for seg in kept)]).strip(" ,"), ""


def reduced_terms(instruction: str) -> tuple[str, ...]:
    """What an edit turns down ("less red" → "red"), for the negative prompt; weather is reduced in place."""
    out: list[str] = []
    for clause in split_instruction(instruction):
        what = reduced_target(clause)
        if what and not any(re.match(r"(?:" + "|".join(w.words) + r")", what) for w in WEATHER):
            out.append(what)
    return tuple(_dedupe(out))


#: "replace the whale with a shark", "swap the cat for a dog", "turn the dog into a wolf"
_REPLACE = (
    r"(?:replace|swap|exchange)\s+(?:the\s+|a\s+|an\s+)?(?P<old>[a-z][a-z\-]*(?:\s+[a-z][a-z\-]*)?)\s+"
    r"(?:with|for|by)\s+(?P<new>.+)"
    r"|(?:turn|change|transform)\s+the\s+(?P<old2>[a-z][a-z\-]*)\s+(?:in)?to\s+(?P<new2>(?:an?|some)\s+.+)"
    # "make the dog a cat", "make the cabin into a castle" (not "make the sky a deep orange")
    r"|make\s+the\s+(?P<old3>[a-z][a-z\-]*)\s+(?:into\s+)?(?P<new3>(?:an?|some)\s+(?!(?:bit|little|lot|touch|tad)\b)"
    r"(?!.*\b(?:shade|hue|tone|colou?r|deeper|darker|lighter|brighter|" + "|".join(COLORS) + r")\b).+)"
)


def _edit_replace(prompt: str, clause: str) -> tuple[str, str] | None:
    m = re.fullmatch(_REPLACE, clause, flags=re.IGNORECASE)
    if not m:
        return None
    old = (m.group("old") or m.group("old2") or m.group("old3")).lower()
    new = (m.group("new") or m.group("new2") or m.group("new3")).strip()
    # "swap the sofa for a green one": a green sofa, not "a green one"
    new = re.sub(r"\b(?:one|ones)$", old.split()[-1], new, flags=re.IGNORECASE)
    if _weather_named(old) and _weather_named(new):
        # "replace the snow with rain": the weather rule takes the snow away and brings the rain
        cleared = _edit_weather(prompt, f"remove the {old}")
        brought = _edit_weather(cleared[0] if cleared else prompt, f"add {new}")
        return (brought[0] if brought else prompt), ""
    head = re.escape(old.split()[-1])
    # the old thing with its article and up to two adjectives: "a large blue whale" → the new thing
    found = re.search(
        r"\b(?:(?:an?|the|some)\s+)?(?:[a-z\-]+\s+){0,2}?" + head + r"(?:e?s)?\b", prompt, flags=re.IGNORECASE
    )
    if not found:
        # the words do not name it (an upload, "the dog" in a "portrait"): the new thing is said,
        # and the old one is not, so a model is not asked for the dog it should lose
        return _insert_after_subject(prompt, new, as_segment=True), ""
    if not re.match(r"(?:an?|the|some)\s", new, flags=re.IGNORECASE) and found.group(0).lower().startswith(
        "a"
    ):
        new = f"a {new}"
    return _fix_articles(prompt[: found.start()] + new + prompt[found.end() :]), ""


#: "put it on a beach", "place the fox in a forest": a new setting for the subject
_PLACE = (
    r"(?:put|place|set|move|take|send)\s+(?:it|him|her|them|this|that|the\s+(?P<obj>[a-z][a-z\-]*))\s+"
    r"(?P<where>(?:on|in|at|into|onto|inside|under|underwater|by|near|beside)\b.*)"
)
#: where the subject is now, in the subject's own words ("in the woods", "on a mossy rock")
_SUBJECT_SETTING = (
    r"\s(?:in|on|at|by|near|inside|under|beside|atop)\s+(?:the|a|an)\s+[a-z\- ]+?"
    r"(?=\s+(?:at|during|with|under|in)\s|$)"
)


def _subject_setting(head: str) -> re.Match[str] | None:
    """Where the subject is in the prompt's first part ("in the woods"); "at night" is a time, not a place."""
    setting = re.search(_SUBJECT_SETTING, head, flags=re.IGNORECASE)
    if setting and not any(w in setting.group(0).lower().split() for w in _TIME_WORDS):
        return setting
    return None


#: "a 50mm lens shot", "shot on 35mm", "use an 85 mm lens": one focal length a picture can have
_LENS = r"\b(?P<mm>\d{2,3})\s?mm\b(?:\s+lens\b)?"


def _edit_lens(prompt: str, clause: str) -> tuple[str, str] | None:
    said = re.search(_LENS, clause, flags=re.IGNORECASE)
    if said is None:
        return None
    lens = f"{said['mm']}mm lens"
    left = re.sub(
        r"^(?:make\s+it|use|shoot\s+(?:it\s+)?(?:with|on)|shot\s+(?:with|on)|with|as)?(?:\s*\ban?)?\s*$",
        "",
        clause[: said.start()].strip(),
        flags=re.IGNORECASE,
    )
    rest = re.sub(r"^\s*(?:shot|photo|photograph|look)\b", "", clause[said.end() :], flags=re.IGNORECASE)
    leftover = f"{left} {rest}".strip(" ,")
    if re.search(_LENS, prompt, flags=re.IGNORECASE):
        return re.sub(_LENS, lens, prompt, count=1, flags=re.IGNORECASE), leftover
    return _insert_before_details(prompt, lens), leftover


def _edit_place(prompt: str, clause: str) -> tuple[str, str] | None:
    m = re.fullmatch(_PLACE, clause, flags=re.IGNORECASE)
    if not m or re.fullmatch(_MOVE_IN_FRAME, clause, flags=re.IGNORECASE):  # "in the top left": the frame
        return None
    place = re.split(r"\s+(?=(?:at|during|with|and)\s)", m["where"], maxsplit=1)[0]
    if (
        time_of_day(place)
        or asks_no_background(f"put it {place}")
        or re.match(
            r"(?:in|during|under)\s+(?:the\s+)?(?:winter|summer|spring|autumn|fall|rain|snow|fog|mist|storm|"
            r"sun|sunshine|sunlight|moonlight)\b",
            place,
            flags=re.IGNORECASE,
        )
    ):
        # "put it in the evening", "… in the rain", "… on a white background": no place; the words
        # after "put it" are left over for the time, weather or background rule
        return prompt, m["where"]
    where = re.sub(r"^(?:into|onto)\b", lambda p: p.group(0)[:-2], m.group("where"), flags=re.IGNORECASE)
    # "on a beach at sunset": the place here, the time for the time rule
    time_follows = re.search(r"\s+(?=(?:at|during|with|and)\s)", where, flags=re.IGNORECASE)
    left = ""
    if time_follows:
        where, left = where[: time_follows.start()], where[time_follows.end() :]
    head, sep, rest = prompt.partition(",")
    obj = (m.group("obj") or "").lower()
    if obj and prompt and not re.search(r"\b" + re.escape(obj) + r"(?:e?s)?\b", head, flags=re.IGNORECASE):
        # "put the fox in front of the cabin" on the cabin picture: a fox is added there; the
        # cabin stays where it is
        named = re.search(r"\b" + re.escape(obj) + r"(?:e?s)?\b", prompt, flags=re.IGNORECASE)
        thing = f"the {obj}" if named else _fix_articles(f"a {obj}")
        return _insert_after_subject(prompt, f"{thing} {where}", as_segment=True), left
    setting = _subject_setting(head)
    if setting:
        head = head[: setting.start()] + " " + where + head[setting.end() :]
        return head + sep + rest, left
    return _insert_after_subject(prompt, where, as_segment=False), left


#: "give her glasses", "give the fox a hat" (not "give it a vintage look", a style or mood)
_GIVE = (
    r"give\s+(?:him|her|it|them|the\s+(?P<obj>[a-z][a-z\-]*))\s+(?P<what>(?!(?:an?\s+)?(?:[a-z\-]+\s+)?"
    r"(?:look|feel|vibe|touch|glow|makeover|style|effect|finish|tint|mood|atmosphere|aesthetic)\b).+)"
)
#: "move the bowl to the right", "put the moon in the top left": where a thing sits in the frame
_MOVE_IN_FRAME = (
    r"(?:move|shift|put|place|slide)\s+the\s+(?P<obj>[a-z][a-z\-]*)\s+(?:to|towards|into|in|on)\s+the\s+"
    r"(?P<side>(?:(?:top|bottom|upper|lower)\s+)?(?:left|right)|top|bottom|cent(?:er|re)|middle|foreground|background)"
    r"(?:\s+(?:side|corner|edge))?(?:\s+of\s+the\s+(?:frame|image|picture))?"
)
#: "make the table wooden": one word about one thing (comparatives and colours have rules of their own)
#: the adjective has to look like one ("wooden", "rusty", "glossy", "old"): "make the fox smile" is not
_THING_ADJECTIVE = (
    r"make\s+the\s+(?P<obj>[a-z][a-z\-]*)\s+(?P<adj>(?!more\b|less\b)(?:[a-z][a-z\-]*(?:en|y|ful|ous|ic|al|ish|less|ive|"
    r"ed|able|ible|ant|ent|ary)|old|new|wet|dry|bare|bald|clean|huge|tiny))"
)


#: what a thing in the picture can be made to do ("make the fox smile", "have the dog sit")
_ACTION_VERBS = vocab(
    """
    smile laugh grin cry frown wink yawn sleep sit stand lie kneel crouch lean run jump fly swim walk
    dance sing look stare gaze wave hold eat drink read play howl roar bark rest pose point hug fight
    climb ride face glance peek smoke hide wear carry glow shine sparkle shimmer flicker burn
    """
)
#: whole-body poses: a new one replaces the old ("sitting" → "sleeping"), an expression does not
_POSES = vocab("sleep sit stand lie kneel crouch lean run jump fly swim walk dance rest climb ride hide")
_DOUBLED = vocab("sit run swim grin hug")


def _gerund(verb: str) -> str:
    if verb == "lie":
        return "lying"
    if verb in _DOUBLED:
        return verb + verb[-1] + "ing"
    if verb.endswith("e") and not verb.endswith(("ee", "ye", "oe")):
        return verb[:-1] + "ing"
    return verb + "ing"


_ACTION_BY_FORM = {**{v: v for v in _ACTION_VERBS}, **{_gerund(v): v for v in _ACTION_VERBS}}
_THING_ACTION = (
    r"(?:(?:make|have|let|get)\s+the\s+(?P<obj>[a-z][a-z\-]*)(?:\s+to)?"
    r"|the\s+(?P<obj2>[a-z][a-z\-]*)\s+should(?:\s+be)?)\s+(?P<verb>[a-z]+)(?P<rest>(?:\s+.+)?)"
)


def _before_adjectives(prompt: str, noun: re.Match[str], word: str) -> str:
    """ "a red fox" → "a smiling red fox": the word goes first among the thing's adjectives."""
    head = prompt[: noun.start()]
    article = list(re.finditer(r"\b(?:a|an|the|one|two|three|some)\s+(?=[^,]*$)", head, flags=re.IGNORECASE))
    at = article[-1].end() if article else noun.start()
    return _fix_articles(prompt[:at] + f"{word} " + prompt[at:])


def _edit_thing_action(prompt: str, clause: str) -> tuple[str, str] | None:
    """ "make the fox smile", "the dog should be sleeping": the thing doing it, in the picture's words."""
    m = re.fullmatch(_THING_ACTION, clause.strip(), flags=re.IGNORECASE)
    if not m or m["verb"].lower() not in _ACTION_BY_FORM or not prompt:
        return None
    obj, verb, rest = (m["obj"] or m["obj2"]).lower(), _ACTION_BY_FORM[m["verb"].lower()], m["rest"].strip()
    doing = f"{_gerund(verb)} {rest}".strip()
    noun = re.search(r"\b" + re.escape(obj) + r"(?:e?s)?\b", prompt, flags=re.IGNORECASE)
    if noun is None:
        # "make the windows glow" when the prompt has no windows: "glowing windows"
        phrase = f"the {obj} {doing}" if rest else f"{doing} {obj}"
        return _insert_after_subject(prompt, phrase, as_segment=True), ""
    after = prompt[noun.end() :]
    old_pose = re.match(r"\s+(?P<g>[a-z]+ing)\b(?P<phrase>[^,]*)", after, flags=re.IGNORECASE)
    if verb in _POSES and old_pose and _ACTION_BY_FORM.get(old_pose["g"].lower()) in _POSES:
        # "sitting on a mossy rock" → "sleeping on a mossy rock": one pose at a time, the place kept
        kept = "" if rest else old_pose["phrase"]
        return prompt[: noun.end()] + f" {doing}{kept}" + after[old_pose.end() :], ""
    if not rest:
        return _before_adjectives(prompt, noun, doing), ""
    return _insert_after_subject(prompt, f"the {obj} {doing}", as_segment=True), ""


#: "make her wave", "have them dance": the subject doing it, when a pronoun names the subject
_SUBJECT_ACTION = (
    r"(?:make|have|let|get)\s+(?:her|him|it|them)(?:\s+to)?\s+(?P<verb>[a-z]+)(?P<rest>(?:\s+.+)?)"
)


def _edit_subject_action(prompt: str, clause: str) -> tuple[str, str] | None:
    """The action after the subject's own words, before where it is: "Mira waving at the beach"."""
    m = re.fullmatch(_SUBJECT_ACTION, clause.strip(), flags=re.IGNORECASE)
    if not m or m["verb"].lower() not in _ACTION_BY_FORM or not prompt:
        return None
    doing = f"{_gerund(_ACTION_BY_FORM[m['verb'].lower()])} {m['rest'].strip()}".strip()
    first, sep, rest = prompt.partition(",")
    end = re.search(_SUBJECT_END, first, flags=re.IGNORECASE)
    at = end.start() if end else len(first.rstrip())
    return first[:at] + f" {doing}" + first[at:] + sep + rest, ""


#: "-er" comparatives whose plain form ends in "e" ("cuter" is "cute", not "cut")
_E_COMPARATIVES = vocab("cuter wider larger paler closer whiter nicer safer bluer purer ruder riper")
#: nouns that end like comparatives, and comparatives about the light or the framing, which
#: other rules read ("make the cabin darker" is the lighting, not dark wood)
_NOT_THING_COMPARATIVES = vocab(
    """
    other water paper silver copper amber ever never corner border darker brighter lighter dimmer
    warmer cooler colder sharper softer simpler busier closer farther further
    """
)
_THING_COMPARATIVE = (
    r"make\s+the\s+(?P<obj>[a-z][a-z\-]*)\s+(?:(?:a\s+(?:bit|little)|much|even|slightly)\s+)?"
    r"(?P<adj>[a-z]+(?:ier|er))"
)


def _plain_adjective(comparative: str) -> str | None:
    """ "fluffier" → "fluffy", "older" → "old", "bigger" → "big"; None for words like "water"."""
    word = comparative.lower()
    if word.endswith("ier"):
        return word[:-3] + "y"
    if word in _E_COMPARATIVES:
        return word[:-1]
    stem = word[:-2]
    if len(stem) >= 3 and stem[-1] == stem[-2] and stem[-1] not in "aeiouls":
        return stem[:-1]  # "bigger", "thinner"
    return stem if len(stem) >= 3 else None


def _edit_thing_comparative(prompt: str, clause: str) -> tuple[str, str] | None:
    """ "make the fox fluffier": the thing becomes very fluffy (a prompt has no "more")."""
    m = re.fullmatch(_THING_COMPARATIVE, clause.strip(), flags=re.IGNORECASE)
    if not m or m["adj"].lower() in _NOT_THING_COMPARATIVES:
        return None
    adj, obj = _plain_adjective(m["adj"]), m["obj"].lower()
    noun = re.search(r"\b" + re.escape(obj) + r"(?:e?s)?\b", prompt, flags=re.IGNORECASE) if adj else None
    if adj is None or noun is None:
        return None
    head = prompt[: noun.start()]
    already = re.search(r"\b(?:very\s+)?" + re.escape(adj) + r"\s+(?=[^,]*$)", head, flags=re.IGNORECASE)
    if already:  # "a fluffy fox" → "a very fluffy fox"; "very" twice would say nothing more
        if already.group(0).lower().startswith("very"):
            return _fix_articles(prompt.replace(already.group(0), f"extremely {adj} ", 1)), ""
        return head[: already.start()] + f"very {adj} " + head[already.end() :] + prompt[noun.start() :], ""
    return _before_adjectives(prompt, noun, f"very {adj}"), ""


#: "blur the background", "make the background out of focus", "add bokeh": a camera's depth of
#: field, drawn by the model (a blur filter would blur the subject too)
_BACKGROUND_BLUR = (
    r"(?:blur|soften|defocus)\s+(?:the\s+|its\s+)?(?:background|backdrop)"
    r"|make\s+(?:the\s+|its\s+)?(?:background|backdrop)\s+(?:(?:more|a\s+(?:bit|little))\s+)?"
    r"(?:blurry|blurrier|blurred|out\s+of\s+focus|soft|softer|fuzzy|hazy)"
    r"|(?:add\s+|with\s+|more\s+|some\s+)*(?:bokeh|(?:a\s+)?shallow(?:er)?\s+depth\s+of\s+field|background\s+blur)"
)
_DEPTH_OF_FIELD = "blurred background, shallow depth of field, bokeh"


#: camera angles, each said the way models know it; one at a time
CAMERA_ANGLES: dict[str, str] = {
    "above": "high angle shot, seen from above",
    "aerial": "aerial view, bird's eye view",
    "below": "low angle shot, seen from below",
    "side": "side view",
    "behind": "seen from behind",
    "front": "front view",
    "different": "different camera angle, new viewpoint",
}
_ANGLE_WORDS = (
    (
        r"from\s+(?:high\s+)?above|(?:a\s+)?high[\s-]angle(?:\s+(?:shot|view))?|top[\s-]down(?:\s+view)?|overhead(?:\s+(?:shot|view))?",
        "above",
    ),
    (
        r"(?:an?\s+)?(?:aerial|drone|bird'?s?[\s-]eye)(?:\s+(?:shot|view|perspective))?|from\s+the\s+(?:air|sky)",
        "aerial",
    ),
    (
        r"from\s+below|(?:a\s+)?low[\s-]angle(?:\s+(?:shot|view))?|(?:a\s+)?worm'?s?[\s-]eye(?:\s+view)?|from\s+the\s+ground",
        "below",
    ),
    (r"from\s+the\s+side|(?:a\s+)?side\s+view|(?:in\s+)?profile(?:\s+view)?", "side"),
    (r"from\s+behind|from\s+the\s+back|(?:a\s+)?(?:back|rear)\s+view", "behind"),
    (r"from\s+the\s+front|(?:a\s+)?front(?:al)?\s+view|head[\s-]on", "front"),
    (
        r"(?:from\s+|with\s+|at\s+)?(?:an?(?:\s+|other\s+))?(?:different|new|other|another)\s+(?:camera\s+)?(?:angle|"
        r"viewpoint|perspective|point\s+of\s+view)",
        "different",
    ),
)


def _edit_angle(prompt: str, clause: str) -> tuple[str, str] | None:
    """ "from above", "a low angle", "try a different angle": the camera moves, the subject stays."""
    said = re.sub(
        r"^(?:(?:show|shoot|draw|render|do|make|try|see|view)\s+(?:it|this|that|them|the\s+[a-z\-]+)?\s*|"
        r"(?:use|with|change\s+the\s+(?:camera|angle)\s+to)\s+)?",
        "",
        clause.strip(),
        flags=re.IGNORECASE,
    )
    kind = next(
        (
            k
            for pattern, k in _ANGLE_WORDS
            if re.fullmatch(r"(?:(?:from|at|with|in)\s+)?(?:" + pattern + ")", said, re.I)
        ),
        None,
    )
    if kind is None:
        return None
    segments = [seg.strip() for seg in prompt.split(",") if seg.strip()]
    old = {part for phrase in CAMERA_ANGLES.values() for part in phrase.split(", ")}
    kept = ", ".join(seg for seg in segments if seg not in old)
    return _insert_after_subject(kept, CAMERA_ANGLES[kind], as_segment=True), ""


#: "change the background to mountains", "replace the background with a city", "put mountains in
#: the background": a new backdrop behind the same subject
_BACKGROUND = (
    r"(?:(?:change|set|switch|turn|make)\s+(?:the\s+|its\s+)?(?:background|backdrop|scenery)\s+(?:to|into|in)\s+"
    r"|(?:replace|swap)\s+(?:the\s+|its\s+)?(?:background|backdrop|scenery)\s+(?:with|for)\s+"
    r"|make\s+(?:the\s+|its\s+)?(?:background|backdrop)\s+(?=(?:a|an|the|some)\s)"
    r"|(?:the\s+)?(?:background|backdrop)\s+(?:should\s+be|is|of|as)\s+"
    r"|(?:put|add|place|with)\s+(?=.+\s+in\s+the\s+background$))(?P<what>.+?)(?:\s+in\s+the\s+background)?"
)


#: "remove the background", "white background", "no background": the subject alone, on plain white
_NO_BACKGROUND = (
    r"(?:(?:remove|delete|erase|drop|cut\s+out|take\s+(?:out|away)|get\s+rid\s+of|lose)\s+(?:the\s+|its\s+)?"
    r"(?:background|backdrop|scenery)|no\s+background|without\s+(?:a\s+|the\s+)?background"
    r"|make\s+(?:the\s+|its\s+)?background\s+(?:plain\s+)?(?:white|plain|blank|transparent|empty)"
    r"|(?:(?:make|give|put|set)\s+(?:it|the\s+background|the\s+(?:image|picture))\s+(?:on\s+|to\s+|a\s+)?)?"
    r"(?:on\s+)?(?:a\s+)?(?:plain|white|blank|transparent|clean)(?:\s+white)?\s+background)"
)
NO_BACKGROUND = "isolated on a plain white background"
_SCENE_TERMS = ("detailed environment", "wide establishing view", "layered foreground and background")


def asks_no_background(text: str) -> bool:
    """ "remove the background", "make the background white": the subject alone on plain white."""
    return re.fullmatch(_NO_BACKGROUND, _clean_clause(text), flags=re.IGNORECASE) is not None


#: "write 'welcome' on the door", "add the text 'Happy Birthday' at the top": lettering in the picture
_LETTERING = (
    r"(?:write|print|paint|put|add|place)\s+(?:the\s+)?(?:(?:text|words?|caption|title|lettering)\s+)?"
    r"(?P<words>[\"“'][^\"”']+[\"”']|(?:an?\s+(?:big\s+|large\s+)?)?number\s+(?P<number>\d{1,4}))"
    r"(?:\s+(?P<where>(?:on|across|at|in|over|above|below|under)\s+.+))?"
)


def _quoted(said: str) -> str:
    """Words the user quoted, in the one pair of quotes prompts use ("'Open'" → “Open”)."""
    return "“" + said.strip("\"“”'") + "”"


def _edit_lettering(prompt: str, clause: str) -> tuple[str, str] | None:
    m = re.fullmatch(_LETTERING, clause.strip(), flags=re.IGNORECASE)
    if not m:
        return None
    where = f" {m['where'].strip()}" if m["where"] else ""
    if m["number"]:  # "write the number 3 on it": a numeral, drawn as one
        return _insert_after_subject(prompt, f"the number {m['number']} written{where}", as_segment=True), ""
    words = _quoted(m["words"])
    return _insert_after_subject(prompt, f"the words {words} written{where}", as_segment=True), ""


#: "change the name to 'Bean Here'", "make the sign say 'Open'": other words where words are
_REWORD = (
    r"(?:(?:change|rename|make|set|update|switch)\s+)?(?:the\s+|its\s+|it\s+)?(?:(?P<what>name|text|title|words?|wording|"
    r"caption|lettering|sign|label|slogan|headline)\s+)?(?:to|into|should\s+(?:say|read)|(?:say|read)s?)\s+"
    r"(?P<words>[\"“'][^\"”']+[\"”'])"
)


def _edit_reword(prompt: str, clause: str) -> tuple[str, str] | None:
    """New words for the words already in the picture (the quoted part of the prompt)."""
    m = re.fullmatch(_REWORD, clause.strip(), flags=re.IGNORECASE)
    if not m:
        return None
    said = re.search(r"[“\"][^”\"]+[”\"]", prompt)
    words = _quoted(m["words"])
    if said is None:  # no words yet: they are written in, on the sign when one is named
        where = f" on the {m['what'].lower()}" if (m["what"] or "").lower() in ("sign", "label") else ""
        return prompt, f"write {words}{where}"
    return prompt[: said.start()] + words + prompt[said.end() :], ""


def _edit_no_background(prompt: str, clause: str) -> tuple[str, str] | None:
    if not asks_no_background(clause):
        return None
    if not prompt:  # an upload: the request is the whole prompt
        return NO_BACKGROUND, ""
    head, sep, rest = prompt.partition(",")
    if setting := _subject_setting(head):
        head = head[: setting.start()] + head[setting.end() :]
    segments = [
        s
        for s in (head + sep + rest).split(",")
        if s.strip() not in _SCENE_TERMS and not s.strip().endswith("in the background")
    ]
    return _insert_after_subject(",".join(segments), NO_BACKGROUND, as_segment=True), ""


def _edit_background(prompt: str, clause: str) -> tuple[str, str] | None:
    m = re.fullmatch(_BACKGROUND, clause.strip(), flags=re.IGNORECASE)
    if not m or not prompt:
        return None
    what = re.sub(r"^(?:a|an|the|some)\s+(?=\w+s\b)", "", m["what"].strip(), flags=re.IGNORECASE)
    head, sep, rest = prompt.partition(",")
    if setting := _subject_setting(head):
        head = head[: setting.start()] + head[setting.end() :]  # the old backdrop goes
    segments = [
        seg for seg in (head + sep + rest).split(",") if not seg.strip().endswith("in the background")
    ]
    return _insert_after_subject(",".join(segments), f"{what} in the background", as_segment=True), ""


#: "make it better", "improve it", "more detail": no one change, so the craft words go up a step
_IMPROVE = (
    r"(?:(?:make|get)\s+(?:it|this|that|the\s+(?:image|picture))\s+(?:look\s+)?(?:(?:a\s+(?:bit|little|lot)|much|even)\s+)?"
    r"(?:better|nicer|prettier|more\s+beautiful|good|great|beautiful|more\s+polished|more\s+professional)"
    r"|(?:improve|enhance|polish|refine|beautify)(?:\s+(?:it|this|that|the\s+(?:image|picture|quality)))?"
    r"|(?:(?:add\s+)?more|with\s+more|extra|better|higher)\s+(?:details?|detailed|quality)|more\s+detailed"
    r"|(?:improve|enhance|better|higher)\s+(?:the\s+)?quality)"
)
IMPROVED_TERMS = "intricate details, refined composition, professional quality"


def _terms_once(pattern: str, terms: str) -> Callable[[str, str], tuple[str, str] | None]:
    """A rule that adds `terms` for a clause matching `pattern`, once: a second time changes
    nothing, and the planner then asks what to change instead of drawing the same again."""

    def rule(prompt: str, clause: str) -> tuple[str, str] | None:
        if not re.fullmatch(pattern, clause.strip(), flags=re.IGNORECASE):
            return None
        return (prompt if terms in prompt else _insert_before_details(prompt, terms)), ""

    return rule


_edit_improve = _terms_once(_IMPROVE, IMPROVED_TERMS)


#: "make it pop", "punchier", "more eye-catching": bold colour and contrast, in words models know
_POP = (
    r"(?:make\s+(?:it|this|that|the\s+(?:image|picture|colou?rs?))\s+)?(?:(?:a\s+(?:bit|little)|much|more|even)\s+)?"
    r"(?:pop(?:\s+more)?|punchier|punchy|more\s+(?:striking|eye-catching|dynamic|vivid)|striking|eye-catching|vivid)"
)
_POP_TERMS = "vibrant colors, bold contrast"
_edit_pop = _terms_once(_POP, _POP_TERMS)


def _edit_background_blur(prompt: str, clause: str) -> tuple[str, str] | None:
    if not re.fullmatch(_BACKGROUND_BLUR, clause.strip(), flags=re.IGNORECASE):
        return None
    if _DEPTH_OF_FIELD in prompt:
        return prompt, ""
    prompt = prompt.replace("layered foreground and background", "subject in sharp focus")
    return _insert_before_details(prompt, _DEPTH_OF_FIELD), ""


def _with_thing(prompt: str, obj: str | None, phrase: str) -> str:
    """`phrase` next to the thing it is about when the prompt names it, else after the subject."""
    noun = re.search(r"\b" + re.escape(obj) + r"(?:e?s)?\b", prompt, flags=re.IGNORECASE) if obj else None
    if noun is None:
        return _insert_after_subject(prompt, phrase, as_segment=True)
    return prompt[: noun.end()] + f" {phrase}" + prompt[noun.end() :]


def _edit_give(prompt: str, clause: str) -> tuple[str, str] | None:
    m = re.fullmatch(_GIVE, clause, flags=re.IGNORECASE)
    if not m:
        return None
    what = m["what"].strip()
    worn = _is_worn(what)
    return _with_thing(prompt, m["obj"], f"wearing {what}" if worn else f"with {what}"), ""


#: things a subject wears: "give the fox a hat" and "put the fox in a scarf" both mean "wearing"
_WORN = vocab(
    """
    hat hats cap caps helmet crown tiara scarf scarves coat coats jacket jackets sweater sweaters hoodie
    jumper dress dresses suit suits tuxedo shirt t-shirt costume armor armour cape cloak boots shoes
    glasses sunglasses spectacles goggles mask gloves mittens tie bowtie bow-tie kimono robe robes uniform
    apron raincoat vest pajamas pyjamas onesie beanie bandana collar necklace earrings backpack
    headphones wig veil hood sombrero fedora beret turban overalls jeans skirt
    """
)


def _is_worn(what: str) -> bool:
    words = re.findall(r"[a-z][a-z\-]*", what.lower())
    return bool(words) and words[-1] in _WORN


#: "put the fox in a hat", "dress the cat in a red scarf", "dress the fox as a pirate"
_DRESS = (
    r"(?:(?:put|dress)\s+(?:up\s+)?(?:him|her|it|them|the\s+(?P<obj>[a-z][a-z\-]*))\s+(?:up\s+)?in|"
    r"(?:have|let|make)\s+the\s+(?P<obj3>[a-z][a-z\-]*)\s+wear)\s+(?P<what>.+)"
    r"|dress\s+(?:up\s+)?(?:him|her|it|them|the\s+(?P<obj2>[a-z][a-z\-]*))\s+(?:up\s+)?as\s+(?P<role>.+)"
)


def _edit_dress(prompt: str, clause: str) -> tuple[str, str] | None:
    m = re.fullmatch(_DRESS, clause.strip(), flags=re.IGNORECASE)
    if not m:
        return None
    if m["role"]:
        return _with_thing(prompt, m["obj2"], f"dressed as {m['role'].strip()}"), ""
    what = m["what"].strip()
    if not _is_worn(what):
        return None  # "put the fox in a basket" is a place, which the place rule reads
    obj = m["obj"] or m["obj3"]
    noun = re.search(r"\b" + re.escape(obj) + r"(?:e?s)?\b", prompt, flags=re.IGNORECASE) if obj else None
    if noun is None:
        return _with_thing(prompt, obj, f"wearing {what}"), ""
    # right after the thing's name: "a red fox wearing a hat sitting on a mossy rock", pose and place kept
    return prompt[: noun.end()] + f" wearing {what}" + prompt[noun.end() :], ""


def _edit_move_in_frame(prompt: str, clause: str) -> tuple[str, str] | None:
    m = re.fullmatch(_MOVE_IN_FRAME, clause, flags=re.IGNORECASE)
    if not m:
        return None
    side = m["side"].lower().replace("centre", "center")
    where = f"in the {side}" if side in ("foreground", "background", "center", "middle") else f"on the {side}"
    # said as a phrase of its own: inside the subject it would split "a bowl [here] of fruit"
    return _insert_after_subject(prompt, f"the {m['obj'].lower()} {where} of the frame", as_segment=True), ""


def _edit_thing_adjective(prompt: str, clause: str) -> tuple[str, str] | None:
    m = re.fullmatch(_THING_ADJECTIVE, clause, flags=re.IGNORECASE)
    if not m:
        return None
    obj, adj = m["obj"].lower(), m["adj"].lower()
    noun = re.search(r"\b" + re.escape(obj) + r"(?:e?s)?\b", prompt, flags=re.IGNORECASE)
    if noun is None:
        return _insert_after_subject(prompt, f"{adj} {obj}", as_segment=True), ""
    return _fix_articles(prompt[: noun.start()] + f"{adj} " + prompt[noun.start() :]), ""


def _edit_add(prompt: str, clause: str) -> tuple[str, str] | None:
    m = re.fullmatch(
        r"(?:add|put|include|place|insert|draw|paint|show)\s+(?:in\s+)?(?P<what>.+?)"
        r"(?:\s+(?:to|in|into|onto)\s+(?:it|this|that|the\s+(?:image|picture|scene|photo)))?",
        clause,
        flags=re.IGNORECASE,
    ) or re.fullmatch(r"with\s+(?P<what>.+)", clause, flags=re.IGNORECASE)
    if not m:
        return None
    what = m.group("what").strip()
    if not prompt:  # an upload has no prompt to extend: the new thing is the description
        return what, ""
    # "put a dog next to the cabin": where it goes is part of the picture, said as a phrase of its own
    beside = re.fullmatch(
        r"(?P<thing>.+?)\s+(?P<where>next\s+to|beside|near|behind|in\s+front\s+of|under|above|below)\s+"
        r"(?P<obj>(?:the|its|his|her)\s+.+)",
        what,
        re.I,
    )
    if beside:
        phrase = f"{beside['thing']} {beside['where']} {beside['obj']}"
        return _insert_after_subject(prompt, phrase, as_segment=True), ""
    # "add a hat to the fox": the hat goes with the fox, not after the whole subject phrase
    onto = re.fullmatch(
        r"(?P<thing>.+?)\s+(?:to|on|onto)\s+(?:the|its|his|her)\s+(?P<obj>[a-z][a-z\-]*)", what, re.I
    )
    if onto:
        noun = re.search(r"\b" + re.escape(onto.group("obj")) + r"(?:e?s)?\b", prompt, flags=re.IGNORECASE)
        if noun:
            link = "wearing" if _is_worn(onto.group("thing")) else "with"  # "put a hat on the fox"
            return prompt[: noun.end()] + f" {link} {onto.group('thing')}" + prompt[noun.end() :], ""
        if onto.group("obj").lower() in ("sky", "background", "foreground", "scene", "water", "ground"):
            # "add some stars to the sky": the stars are in the sky, not "stars to the sky"
            where = f"{onto.group('thing')} in the {onto.group('obj').lower()}"
            return _insert_after_subject(prompt, f"with {where}", as_segment=False), ""
    return _insert_after_subject(prompt, f"with {what}", as_segment=False), ""


def _removal_target(clause: str) -> str | None:
    m = re.fullmatch(
        r"(?:remove|delete|erase|get\s+rid\s+of|take\s+(?:out|away)|drop|lose|without|minus|no(?:\s+more)?)\s+"
        r"(?P<what>.+?)(?:\s+(?:from|in)\s+(?:it|this|that|the\s+(?:image|picture|scene|photo)))?",
        clause,
        flags=re.IGNORECASE,
    )
    if not m:
        return None
    what = re.sub(
        r"^(?:the|a|an|any|all(?:\s+the)?|some|those|these|that|this)\s+",
        "",
        m.group("what").strip(),
        flags=re.I,
    )
    return what or None


def _edit_remove(prompt: str, clause: str) -> tuple[str, str] | None:
    what = _removal_target(clause)
    if what is None:
        return None
    head = re.escape(what.split()[-1].lower())
    head = head[:-1] + "(?:s|es)?" if head.endswith("s") else head + "(?:e?s)?"
    pattern = (
        r"(?:\s*,)?\s*(?:\b(?:with|and|plus)\s+)?"
        r"(?:\b(?:an?|the|some|many|several|two|three|\d+)\s+(?:[a-z\-]+\s+)?)?\b" + head + r"\b"
    )
    new = re.sub(pattern, _PLACEHOLDER, prompt, flags=re.IGNORECASE)
    # a preposition left hanging where the thing was ("sitting on _") goes with it
    new = re.sub(
        r"\s+\b(?:on|onto|in|into|at|under|by|near|over|beside|behind|of|from|to|for|with)\s*"
        + _PLACEHOLDER
        + r"(?=\s*(?:,|$))",
        "",
        new,
        flags=re.IGNORECASE,
    )
    new = _tidy(new.replace(_PLACEHOLDER, " "))
    # the subject itself went: "[a red fox] with a hat in the snow" leaves no "with" at the front,
    # "[a garden path] through a forest" leaves "a forest" (and a verb before it goes too)
    return re.sub(
        r"^(?:[a-z]+ing\s+)?(?:with|and|plus|of|to|through|"
        r"across|along|in|on|at|by|near|under|over|into|beside|behind|among|amid)\s+(?=(?:an?|the|some)\s)",
        "",
        re.sub(r"^(?:with|and|plus|of|to)\s+", "", new, flags=re.IGNORECASE),
        flags=re.IGNORECASE,
    ), ""


def _edit_clause(prompt: str, clause: str) -> str:
    cleaned = re.sub(
        r"^(?:make\s+it|make|let\s+it\s+be|have\s+it\s+be|have|turn\s+it|change\s+it\s+to|give\s+it(?:\s+an?)?|"
        r"(?:use|try)(?=\s+(?:an?\s+)?(?:[a-z\-]+\s+)?(?:font|typeface|lettering|palette)\b))\s+"
        r"(?:look(?:s)?\s+(?:like\s+)?(?:an?\s+)?)?",
        "",
        clause,
        flags=re.I,
    )
    if not cleaned:
        return prompt
    return _insert_after_subject(prompt, cleaned, as_segment=True)


def _dedupe_segments(prompt: str) -> str:
    return ", ".join(_dedupe(prompt.split(","))) if prompt else prompt


def apply_edit(parent_prompt: str, instruction: str) -> str:
    """The parent's prompt changed by the instruction, and nothing else changed.

    Each clause of the instruction goes through the first rule that claims it — style, time of
    day, weather, lighting, "less X", replace, "more blue", "the fox bigger", colour, remove,
    add — and whatever a rule leaves
    over goes through the rules again; words no rule understands are added after the subject as
    a clause.
    """
    prompt = clean_idea(parent_prompt)
    for clause in split_instruction(instruction):
        prompt = _apply_clause(prompt, clause)
    return _tidy(_dedupe_segments(prompt))


#: a clause that asks to keep something ("keep the fox", "leave the sky as it is", "don't change the
#: cabin"): the parent's words already say it, so it changes nothing and adds nothing
_KEEP_CLAUSE = (
    r"^(?:but\s+)?(?:(?:please\s+)?(?:keep|leave|preserve|retain|maintain)\b|(?:don'?t|do\s+not|never)\s+"
    r"(?:change|touch|alter|remove|lose|drop|modify)\b|(?:the\s+)?(?:rest|everything\s+else)\s+(?:stays|the\s+same)\b)"
)


def is_keep_clause(clause: str) -> bool:
    """True for "keep the fox" and the like, which an edit honours by leaving the words alone."""
    return re.match(_KEEP_CLAUSE, _clean_clause(clause), flags=re.IGNORECASE) is not None


def only_keeps(instruction: str) -> bool:
    """True when every clause only asks to keep things, so there is nothing to change."""
    clauses = split_instruction(instruction)
    return bool(clauses) and all(is_keep_clause(c) for c in clauses)


#: "make the fox look fluffier", "make the cabin look bigger": how it looks is what it is, in a prompt
_LOOK_ADJECTIVE = (
    r"make\s+the\s+(?P<obj>[a-z][a-z\-]*)\s+look\s+(?P<rest>(?:(?:a\s+(?:bit|little)|much|even|slightly)\s+)?"
    r"[a-z][a-z\-]*)"
)
#: "the cabin should be bigger", "I want the fox to be asleep": a wish about a thing is "make the X …"
_THING_WISH = (
    r"(?:i\s+want\s+|i'?d\s+like\s+|i\s+would\s+like\s+)?the\s+(?P<obj>[a-z][a-z\-]*(?:\s+and\s+(?:the\s+)?"
    r"[a-z][a-z\-]*)?)\s+(?:to\s+be|should\s+be|needs?\s+to\s+be|must\s+be|has\s+to\s+be)\s+(?P<rest>.+)"
)


#: "make the fox and the cabin bigger", "the fox and the cabin red": one change said of two things
_TWO_THINGS = r"(?:make\s+)?the\s+(?P<a>[a-z][a-z\-]*)\s+and\s+(?:the\s+)?(?P<b>[a-z][a-z\-]*)\s+(?P<rest>.+)"


def _each_thing(prompt: str, clause: str) -> list[str] | None:
    """The clause said once of each thing, when a thing rule reads it that way; else None."""
    m = re.fullmatch(_TWO_THINGS, clause.strip(), flags=re.IGNORECASE)
    if not m or m["rest"].split()[0].lower() in ("and", "with", "of", "in", "on", "at", "by", "near"):
        return None
    each = [f"make the {m[k]} {m['rest']}" for k in ("a", "b")]
    readers = (_edit_thing_size, _edit_thing_comparative, _edit_color, _edit_thing_adjective)
    if all(any(read(prompt, one) for read in readers) for one in each):
        return each
    return None


#: "a baby version of it", "a darker version of that": the picture with that quality
_VERSION_OF = (
    r"(?:an?\s+)?(?P<adj>[a-z][a-z\-]*)\s+version\s+of\s+(?:it|this|that|them|the\s+(?:image|picture))"
)


def _version_of(prompt: str, clause: str) -> str | None:
    """ "a darker version of it" is "make it darker"; a word no rule reads ("a baby version of it")
    goes before the subject, where it describes it ("a baby red fox")."""
    m = re.fullmatch(_VERSION_OF, clause.strip(), flags=re.IGNORECASE)
    if m is None:
        return None
    said = f"make it {m['adj'].lower()}"
    changed = _apply_clause(prompt, said)
    if changed != _edit_clause(prompt, said):
        return changed
    article = re.match(r"\s*(?:an?|the)\s+", prompt, flags=re.IGNORECASE)
    at = article.end() if article else 0
    return _fix_articles(prompt[:at] + f"{m['adj'].lower()} " + prompt[at:])


def _apply_clause(prompt: str, clause: str) -> str:
    changed = _apply_one_clause(prompt, clause)
    if NO_BACKGROUND in changed and NO_BACKGROUND in prompt and _gives_a_place(clause):
        # "put him on a beach instead" after "remove the background": the beach is the background
        changed = _tidy(changed.replace(NO_BACKGROUND, ""))
    return changed


def _gives_a_place(clause: str) -> bool:
    """ "put him on a beach", "in a forest": a setting for the subject, which plain white is not."""
    placed = re.search(
        r"\b(?:on|in|at|into|onto|inside|under|by|near)\s+(?:an?|the|some)\s+[a-z]", clause, re.I
    )
    backdrop = re.search(r"\b(?:background|backdrop|scenery)\b", clause, re.I)
    if backdrop and re.search(r"\b(?:blur|bokeh|soft|focus)", clause, re.I):
        return False  # a blurred background is still the plain one
    return bool(placed or backdrop) and not asks_no_background(clause)


def _apply_one_clause(prompt: str, clause: str) -> str:
    if is_keep_clause(clause):
        return prompt
    # "make the roof gold instead of silver": what it was is said only to be left behind
    clause = re.sub(
        r"^((?:make|turn|paint|colou?r)\s.+?)\s+instead\s+of\s+(?:the\s+|an?\s+)?[a-z\-]+(?:\s+[a-z\-]+)?\s*$",
        r"\1",
        clause.strip(),
        flags=re.IGNORECASE,
    )
    version = _version_of(prompt, clause)
    if version is not None:
        return version
    wish = re.fullmatch(_THING_WISH, clause.strip(), flags=re.IGNORECASE)
    if wish:
        clause = f"make the {wish['obj']} {wish['rest']}"
    each = _each_thing(prompt, clause)
    if each:
        for one in each:
            prompt = _apply_one_clause(prompt, one)
        return prompt
    looked = re.fullmatch(_LOOK_ADJECTIVE, clause.strip(), flags=re.IGNORECASE)
    if looked:
        plain = f"make the {looked['obj']} {looked['rest']}"
        readers = (_edit_thing_size, _edit_thing_comparative, _edit_thing_adjective)
        if any(read(prompt, plain) for read in readers):
            clause = plain
    for _ in range(4):
        if not _has_content(clause):
            return prompt
        for rule in (
            _edit_style,
            _edit_dress,  # "put the fox in a hat": worn, not a place
            # "put her in a rainy city at night": the place first, whose own words may name a
            # weather ("rainy city"); the time after it is left over for the time rule
            _edit_place,
            _edit_time,
            _edit_season,
            _edit_lens,
            _edit_reword,
            _edit_lettering,
            _edit_no_background,
            _edit_background,
            _edit_angle,
            _edit_weather,
            _edit_lighting,
            _edit_less,
            _edit_replace,
            _edit_more_color,
            _edit_zoom,
            _edit_thing_size,
            _edit_color,
            _edit_remove,
            _edit_give,
            _edit_move_in_frame,
            _edit_background_blur,
            _edit_pop,
            _edit_improve,
            _edit_thing_action,
            _edit_subject_action,
            _edit_thing_comparative,
            _edit_thing_adjective,
            _edit_add,
        ):
            result = rule(prompt, clause)
            if result is not None:
                prompt, clause = result
                break
        else:
            return _edit_clause(prompt, clause)
    return prompt


def understood_edit(prompt: str, instruction: str) -> bool:
    """True when some rule reads every clause as a change ("daytime", "add a moon"), not only as
    words to add ("a wolf"): such an instruction said of an image is an edit of it."""
    clauses = split_instruction(instruction)
    return bool(clauses) and all(
        _apply_one_clause(prompt, clause) != _edit_clause(prompt, clause) for clause in clauses
    )


#: where a subject ends in the first part of a prompt: "a red fox | in a meadow", "a girl | reading"
_SUBJECT_END = (
    r"\s+(?:in|on|at|by|under|with|near|beside|behind|over|above|inside|among|through|across|along|"
    r"against|sitting|standing|lying|walking|running|flying|swimming|perched|resting|reading|holding)\b"
)


def swap_subject(prompt: str, subject: str) -> str:
    """The prompt with a new subject in the old one's place: "a red fox in a meadow, …" with "a wolf"
    is "a wolf in a meadow, …"; a subject with its own setting replaces the whole first part."""
    first, sep, rest = prompt.partition(",")
    end = re.search(_SUBJECT_END, first, flags=re.IGNORECASE)
    if end is None or re.search(_SUBJECT_END, subject, flags=re.IGNORECASE):
        return subject + sep + rest
    return subject + first[end.start() :] + sep + rest


def removed_terms(instruction: str) -> tuple[str, ...]:
    """What an edit asks to take away ("remove the snow" → "snow"), for the negative prompt."""
    out: list[str] = []
    for clause in split_instruction(instruction):
        if is_keep_clause(clause):  # "don't remove the snow" takes nothing away
            continue
        what = _removal_target(clause)
        if what:
            out.append(what.lower())
            continue
        if re.search(_REMOVE_CUE, clause, flags=re.IGNORECASE):
            for w in WEATHER:
                if re.search(r"\b(?:" + "|".join(w.words) + r")", clause, flags=re.IGNORECASE):
                    out.append(w.name)
    return tuple(_dedupe(out))
