"""Reading "the fox in 4 different styles" and "#2 in watercolor, anime and pixel art".

Such a message asks for several pictures at once, each the same subject in another style. This
module only reads the words: which styles (named, or picked for the user), how many, and what is
left to say which picture; the planner turns that into one plan with one alternative per style.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from assistant.rewrite import STYLE_PRESETS, normalize_style

_I = re.IGNORECASE
_NUMBER = r"\d+|two|three|four|five|six|seven|eight|a\s+few|a\s+couple(?:\s+of)?|several|some|multiple|many"
_WORD_NUMBERS = {"two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8}

#: "in 4 different styles", "in a few different art styles", "in various styles", "in 3 styles"
_DIFFERENT_STYLES = (
    r"\b(?:in|as|with|using)\s+(?:(?P<n>" + _NUMBER + r")\s+)?(?:(?:different|various|varied|other|"
    r"distinct|contrasting)\s+)(?:art(?:istic)?\s+)?styles\b"
    r"|\b(?:in|as)\s+(?P<n2>\d+|two|three|four|five|six|seven|eight)\s+(?:art(?:istic)?\s+)?styles\b"
)
#: where a list of style names may start: "… in watercolor, anime and pixel art (styles)"
_LIST_START = r"\b(?:in|as)\s+"
#: longer messages are no list of styles; the cap also keeps the scan linear in practice
_MAX_LISTED_CHARS = 300

#: the order styles are picked in when the user leaves it open: far apart from each other, so a
#: set of four shows four different looks
STYLE_TOUR: tuple[str, ...] = (
    "watercolor",
    "anime",
    "oil painting",
    "pixel art",
    "3d render",
    "pencil sketch",
    "cyberpunk",
    "line art",
)
#: how many pictures "in different styles" makes when no number is said
DEFAULT_STYLE_COUNT = 4


@dataclass(frozen=True)
class StylesAsked:
    #: preset names, in the order they will be drawn
    styles: tuple[str, ...]
    #: how many were asked for (before capping); for a named list, its length
    requested: int
    #: the message with the style words taken out: what says which picture ("#2", "a cat", "it")
    rest: str
    #: the user said how many ("in 3 styles", or a list); else the count is Atelier's choice
    counted: bool = True


def asked_styles(text: str, current_style: str | None = None) -> StylesAsked | None:
    """The styles a message asks to see one picture each in, or None when it asks for no set."""
    if m := re.search(_DIFFERENT_STYLES, text, flags=_I):
        said = " ".join((m["n"] or m["n2"] or "").lower().split())
        requested = _count(said) if said else DEFAULT_STYLE_COUNT
        pool = [s for s in STYLE_TOUR if s != current_style]
        return StylesAsked(tuple(pool[:requested]), requested, _rest(text, m), counted=bool(said))
    if len(text) > _MAX_LISTED_CHARS:
        return None
    for start in re.finditer(_LIST_START, text, flags=_I):
        tail = re.sub(r"(?:\s+(?:art\s+)?styles?)?[\s.!?]*$", "", text[start.end() :], flags=_I)
        pieces = [p.strip() for p in re.split(r"\s*,\s*|\s+(?:and|or)\s+", tail, flags=_I)]
        styles = [normalize_style(re.sub(r"\s+styles?$", "", p, flags=_I)) for p in pieces if p]
        named = tuple(dict.fromkeys(s for s in styles if s))
        if len(pieces) >= 2 and all(pieces) and all(styles) and len(named) >= 2:
            rest = (text[: start.start()]).strip(" ,.!?")
            return StylesAsked(named, len(named), re.sub(r"\s+", " ", rest))
    return None


def _count(said: str) -> int:
    if said.isdigit():
        return int(said)
    if said.startswith("a couple"):
        return 2
    if said in ("a few", "several", "some", "multiple", "many"):
        return 3
    return _WORD_NUMBERS[said]


def _rest(text: str, m: re.Match[str]) -> str:
    rest = (text[: m.start()] + " " + text[m.end() :]).strip(" ,.!?")
    return re.sub(r"\s+", " ", rest)


def style_label(style: str) -> str:
    """The preset's name as a reply says it ("oil painting", "3D render")."""
    preset = STYLE_PRESETS.get(style)
    name = preset.name if preset else style
    return name.replace("3d", "3D")
