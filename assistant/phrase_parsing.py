"""Small text helpers shared by the planner and its phrase modules.

They live apart from `offline_planner` so that `render_settings`, `chat_replies` and
`transform_phrases` can use them without importing the planner, which imports them.
"""

from __future__ import annotations

import re

_I = re.IGNORECASE


def vocab(words: str) -> frozenset[str]:
    """A word list written as prose, so long vocabularies stay readable."""
    return frozenset(words.split())


_POLITE = (
    r"^(?:(?:please|pls|ok(?:ay)?|so|now|hey|hi|and|then|also|actually|hmm+|maybe|perhaps|great|perfect|nice|"
    r"cool|awesome|lol|yes|yeah|can\s+you|could\s+you|would\s+you|will\s+you|"
    r"i\s+want(?:\s+you)?(?:\s+to)?|i'?d\s+like(?:\s+you)?(?:\s+to)?|i\s+would\s+like(?:\s+to)?|i\s+need|"
    r"let'?s|lets|go\s+ahead\s+and|how\s+about|what\s+about|is\s+it\s+possible\s+to|are\s+you\s+able\s+to|"
    r"is\s+there\s+(?:a|any)\s+way\s+(?:to|(?:i|you|we)\s+(?:can|could)))\s*,?\s+)+"
)


def strip_polite(text: str) -> str:
    """The message without its polite opener ("please", "can you", "ok, so"), which asks for nothing."""
    return re.sub(_POLITE, "", text.strip(), flags=_I).strip()


def without_match(text: str, m: re.Match[str]) -> str:
    """`text` with the match `m` cut out: a phrase once read is no part of what is left to plan."""
    return (text[: m.start()] + " " + text[m.end() :]).strip()
