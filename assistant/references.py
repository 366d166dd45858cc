"""Turning "#3", "the second one", "the fox one", "it" into image numbers — or a question.

Users point at images in many ways; a wrong guess edits the wrong picture and silently
breaks lineage, so this module resolves only what it can resolve for certain and otherwise
returns a question to ask. It never invents a number: every number it returns exists in
the `images` it was given.

Resolution rules (documented here because planners and tests rely on them):

* "#3", "# 3", "image 3", "picture 3", "pic 3", "photo 3", "number 3", "no. 3", "image three",
  "images 2 and 3" → those numbers.
* "the last/latest/newest/most recent/current/final (one|image)", "the new one" → the last image.
* "the previous one", "the one before", "the one before that", "the one before last", "the second
  to last", "the penultimate" → the second to last image; "the one before #3" → the image listed
  before #3. "the other one" means the same: of two images, the one that is not the last.
* "the first image", "the second one", "the third", "the 2nd picture" … up to tenth → the k-th
  image in number order. "the first two" / "the last three" → that many from the start / end.
* "the original" → the root of the last image's lineage (follows parent numbers).
* "my upload", "the upload", "the uploaded photo", "my photo", "the photo I uploaded/attached/sent",
  "the original photo" → the newest image whose operation is "upload" (kind "upload"). With no
  upload in the conversation these ask for one, except "the original photo", which then means
  "the original" (people call generated pictures photos too).
* "both" → the last two images (kept simple: not batch-aware, since two is what "both" means).
* "all of them", "all images", "every image" → all images.
* "them", "these", "those" → the last batch: the trailing run of images that share operation,
  parent and prompt (one backend call).
* "the fox one", "the snowy cabin image", "the one with the fox" → the image whose prompt or
  instruction matches the most of those words; a tie is ambiguous, no match is missing.
* "it", "this", "that", "this one", "that picture" → the last image (kind "pronoun": such words
  appear in plain descriptions too, so planners treat them as implicit, not as explicit choice).

An image attached to the message is stored as the newest upload before planning, so "my
photo" names it; whether the attachment itself is the source of img2img / inpaint is still the
planner's business (`Plan.use_upload`).

With no mention at all the result is NONE, or with `default_to_last=True` the last image
(what a user means by "make it snowier") or NO_IMAGES when there is none.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

from assistant.plan import ImageInfo

NO_IMAGES_QUESTION = "There is no image yet — describe what you'd like me to create."
NO_UPLOAD_QUESTION = (
    "There is no uploaded image in this conversation yet. Attach the photo you mean (the upload "
    "button, or `--image PATH` on the command line) and tell me what to do with it."
)

NUMBER_WORDS: dict[str, int] = {
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
    "dozen": 12,
    "twenty": 20,
    "fifty": 50,
    "hundred": 100,
    "thousand": 1000,
}

ORDINALS: dict[str, int] = {
    "first": 1,
    "second": 2,
    "third": 3,
    "fourth": 4,
    "fifth": 5,
    "sixth": 6,
    "seventh": 7,
    "eighth": 8,
    "ninth": 9,
    "tenth": 10,
    "1st": 1,
    "2nd": 2,
    "3rd": 3,
    "4th": 4,
    "5th": 5,
    "6th": 6,
    "7th": 7,
    "8th": 8,
    "9th": 9,
    "10th": 10,
}

_ORDINAL_WORDS = {v: k for k, v in ORDINALS.items() if k.isalpha()}

_NOUN = r"(?:one|image|picture|pic|photo|version|result|render)"
_NUM = r"(?:\d+|" + "|".join(NUMBER_WORDS) + r")"
_ORD = r"(?:" + "|".join(ORDINALS) + r")"
_COUNT = r"(?:two|three|four|five|six|seven|eight|nine|ten|\d+)"
#: an ordinal without a noun ("the second") only counts when a boundary follows, so that
#: "the third floor of a tower" is not read as image #3
_BOUNDARY = (
    r"(?=\s*(?:$|[,.;:!?)\-]|\b(?:but|and|with|again|please|to|into|as|at|in|is|was|so|too|"
    r"now|instead|more|less|for|from|of|by|one)\b))"
)

#: words that never describe an image's content in "the X one"
_NOT_DESCRIPTIVE = frozenset(
    {
        "other",
        "same",
        "next",
        "whole",
        "entire",
        "good",
        "best",
        "nice",
        "generated",
        "edited",
        "above",
        "below",
        "right",
        "wrong",
        "only",
        "single",
        "big",
        "small",
        "final",
        "current",
        "new",
        "newest",
        "old",
        "this",
        "that",
        "last",
        "latest",
        "previous",
        "original",
        "selected",
        "very",
        *ORDINALS,
        *NUMBER_WORDS,
    }
)

#: words that carry no content when matching a description against prompts
STOPWORDS = frozenset(
    {
        "a",
        "an",
        "the",
        "of",
        "with",
        "in",
        "on",
        "at",
        "and",
        "or",
        "but",
        "to",
        "into",
        "by",
        "for",
        "from",
        "one",
        "image",
        "picture",
        "pic",
        "photo",
        "version",
        "is",
        "was",
        "it",
        "this",
        "that",
        "some",
        "very",
        "under",
        "near",
        "showing",
        "where",
        "has",
        "have",
    }
)


class RefStatus(StrEnum):
    RESOLVED = "resolved"
    #: the text mentions no image (and no default was asked for)
    NONE = "none"
    #: a mention points at an image that does not exist ("#9" of three)
    MISSING = "missing"
    #: a description fits several images equally well
    AMBIGUOUS = "ambiguous"
    #: something was asked of an image but the conversation has none
    NO_IMAGES = "no_images"


@dataclass(frozen=True)
class Mention:
    """One phrase in the text that points at images."""

    #: number, last, previous, ordinal, first_n, last_n, original, upload, both, all, batch, description,
    #: pronoun
    kind: str
    text: str
    start: int
    end: int
    numbers: tuple[int, ...] = ()
    #: for an ambiguous description: the images that tie
    candidates: tuple[int, ...] = ()
    #: None when resolved; otherwise the question to ask
    problem: str | None = None

    @property
    def explicit(self) -> bool:
        """Pronouns are everywhere in plain descriptions; everything else is a deliberate pick."""
        return self.kind != "pronoun"


@dataclass(frozen=True)
class ReferenceResult:
    status: RefStatus
    numbers: tuple[int, ...] = ()
    mentions: tuple[Mention, ...] = ()
    #: the question to ask when the status is MISSING, AMBIGUOUS or NO_IMAGES
    question: str | None = None
    #: images an ambiguous mention could mean
    candidates: tuple[int, ...] = ()
    text: str = ""
    #: True when the last image was chosen because nothing was mentioned
    defaulted: bool = False
    _spans: tuple[tuple[int, int, bool], ...] = field(default=(), repr=False)

    @property
    def ok(self) -> bool:
        return self.status in (RefStatus.RESOLVED, RefStatus.NONE)

    @property
    def explicit(self) -> bool:
        """True when the text picked images on purpose (not only "it"/"this")."""
        return any(m.explicit for m in self.mentions)

    @property
    def remainder(self) -> str:
        """The text with every mention cut out: what is left to interpret as a request."""
        return self.text_without(keep_pronouns=False)

    def text_without(self, *, keep_pronouns: bool) -> str:
        """The text minus mentions; keeping pronouns leaves "make it snowier" readable."""
        pieces: list[str] = []
        pos = 0
        for start, end, is_pronoun in self._spans:
            if keep_pronouns and is_pronoun:
                continue
            gap = self.text[pos:start]
            # "#1 and #3": the word that joined two mentions goes with them
            joined = pos > 0 and re.fullmatch(r"\s*(?:,\s*)?(?:and|or|&|plus)?\s*", gap, flags=re.I)
            pieces.append(" " if joined else gap)
            pieces.append(" ")
            pos = end
        pieces.append(self.text[pos:])
        return _tidy("".join(pieces))


def _tidy(text: str) -> str:
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"\s+([,.;:!?])", r"\1", text)
    return text.strip(" ,;:-")


def _to_int(token: str) -> int:
    token = token.lower()
    return int(token) if token.isdigit() else NUMBER_WORDS[token]


def stem(word: str) -> str:
    """A crude stemmer: enough for "snowy"/"snowier"/"snow" and "foxes"/"fox" to meet."""
    w = word.lower().strip("'\"")
    if w.endswith("'s"):
        w = w[:-2]
    if len(w) <= 3:
        return w
    for suffix in ("iest", "ier"):
        if w.endswith(suffix) and len(w) > len(suffix) + 2:
            w = w[: -len(suffix)] + "y"
            break
    if w.endswith("ies") and len(w) > 4:
        w = w[:-3] + "y"
    elif w.endswith(("ches", "shes", "xes", "sses", "zes")):
        w = w[:-2]
    elif w.endswith("s") and not w.endswith(("ss", "us", "is")):
        w = w[:-1]
    if w.endswith("y") and len(w) > 4:
        w = w[:-1]
    if len(w) > 3 and w[-1] == w[-2] and w[-1] not in "aeiousl":
        w = w[:-1]
    return w


def content_stems(text: str) -> list[str]:
    return [stem(w) for w in re.findall(r"[a-z][a-z'\-]*", text.lower()) if w not in STOPWORDS]


def _stems_match(a: str, b: str) -> bool:
    if a == b:
        return True
    short, long_ = (a, b) if len(a) <= len(b) else (b, a)
    return len(short) >= 4 and long_.startswith(short)


def prompt_mentions(prompt: str, word: str) -> bool:
    """True when `word` ("whale", "foxes") names something in `prompt`, by the stems descriptions use."""
    wanted = stem(word)
    return any(_stems_match(wanted, token) for token in content_stems(prompt))


def describe_image(info: ImageInfo, width: int = 48) -> str:
    """A short label for questions and lists: the subject, or what was done to which image."""
    if info.parent_number is not None and info.instruction:
        label = f"{info.operation} of #{info.parent_number}: “{info.instruction}”"
    elif info.parent_number is not None:
        label = f"{info.operation} of #{info.parent_number}"
    else:
        label = info.prompt.split(",")[0].strip() or info.operation
    if len(label) > width:
        label = label[: width - 1].rstrip() + "…"
    return label


def list_images(images: Sequence[ImageInfo], limit: int = 6) -> str:
    """What exists, for a clarifying question: labelled when few, a range when many."""
    if not images:
        return "no images yet"
    if len(images) > limit:
        return f"#{images[0].number}–#{images[-1].number}"
    return "; ".join(f"#{i.number} ({describe_image(i)})" for i in images)


class _Finder:
    """Collects non-overlapping mentions, earlier patterns taking precedence."""

    def __init__(self, text: str, images: Sequence[ImageInfo]) -> None:
        self.text = text
        self.images = list(images)
        self.numbers = [i.number for i in self.images]
        self.mentions: list[Mention] = []

    def taken(self, start: int, end: int) -> bool:
        return any(start < m.end and m.start < end for m in self.mentions)

    def scan(self, pattern: str, resolve: Callable[[re.Match[str]], Mention]) -> None:
        for match in re.finditer(pattern, self.text, flags=re.IGNORECASE):
            if not self.taken(match.start(), match.end()):
                self.mentions.append(resolve(match))

    # -- helpers building mentions -------------------------------------------------------------

    def ok(self, m: re.Match[str], kind: str, numbers: Sequence[int]) -> Mention:
        return Mention(kind, m.group(0), m.start(), m.end(), tuple(numbers))

    def problem(self, m: re.Match[str], kind: str, question: str) -> Mention:
        return Mention(kind, m.group(0), m.start(), m.end(), problem=question)

    def exists_text(self) -> str:
        return f"This conversation has {list_images(self.images)}."

    def by_numbers(self, m: re.Match[str], kind: str, wanted: Sequence[int]) -> Mention:
        missing = [n for n in wanted if n not in self.numbers]
        if not self.images:
            return self.problem(m, kind, NO_IMAGES_QUESTION)
        if missing:
            names = " or ".join(f"#{n}" for n in missing)
            return self.problem(
                m, kind, f"There is no image {names}. {self.exists_text()} Which one did you mean?"
            )
        return self.ok(m, kind, wanted)

    def by_position(self, m: re.Match[str], kind: str, index: int, phrase: str) -> Mention:
        """index counts from 0 at the start, or from -1 at the end."""
        if not self.images:
            return self.problem(m, kind, NO_IMAGES_QUESTION)
        if -len(self.images) <= index < len(self.images):
            return self.ok(m, kind, [self.numbers[index]])
        count = len(self.images)
        has = f"only {count} image" + ("s" if count != 1 else "")
        return self.problem(
            m, kind, f"There is no {phrase} — this conversation has {has}: {list_images(self.images)}."
        )


def _lineage_root(images: Sequence[ImageInfo], start: ImageInfo) -> int:
    by_number = {i.number: i for i in images}
    current = start
    seen = {current.number}
    while current.parent_number is not None and current.parent_number in by_number:
        current = by_number[current.parent_number]
        if current.number in seen:
            break
        seen.add(current.number)
    return current.number


def last_batch(images: Sequence[ImageInfo]) -> tuple[int, ...]:
    """The images the last turn made: "them", "these", "try again" after a batch.

    Images know the message that brought them; a record without one (an old planner test
    context) falls back to the trailing run with the same operation, parent and prompt.
    """
    if not images:
        return ()
    last = images[-1]
    if last.message_id is not None:
        return tuple(info.number for info in images if info.message_id == last.message_id)
    run = [last.number]
    for info in reversed(images[:-1]):
        if (info.operation, info.parent_number, info.prompt) != (
            last.operation,
            last.parent_number,
            last.prompt,
        ):
            break
        run.append(info.number)
    return tuple(reversed(run))


def _match_description(images: Sequence[ImageInfo], words: str) -> tuple[list[int], int]:
    query = content_stems(words)
    if not query:
        return [], 0
    scores: dict[int, int] = {}
    for info in images:
        tokens = content_stems(f"{info.prompt} {info.instruction or ''}")
        scores[info.number] = sum(1 for q in query if any(_stems_match(q, t) for t in tokens))
    best = max(scores.values(), default=0)
    if best == 0:
        return [], 0
    return [n for n, s in scores.items() if s == best], best


def _trim_description(words: str) -> str:
    kept: list[str] = []
    for word in words.split():
        if word.lower() in STOPWORDS - {"a", "an", "the"} and kept:
            break
        if word.lower() in {"a", "an", "the"}:
            continue
        kept.append(word)
    return " ".join(kept)


_UPLOADED = r"(?:up-?load(?:ed)?|attach(?:ed|ment)|sent|shared)"
#: phrases that can only mean an image the user uploaded; the group "loose" marks the one that
#: may also mean a generated image ("the original photo")
_UPLOAD_MENTION = (
    r"\b(?:(?:my|the|this|that)\s+(?:own\s+)?(?:up-?loaded|attached)\s+(?:image|picture|pic|photo(?:graph)?|"
    r"one|file|drawing|sketch)"
    r"|(?:my|the|this|that)\s+(?:own\s+)?(?:up-?load|attachment)(?!\s+button)"
    r"|my\s+(?:own\s+)?(?:photo(?:graph)?|pic)"
    r"|the\s+(?:image|picture|pic|photo(?:graph)?|one|file)\s+(?:that\s+)?i\s+(?:just\s+)?"
    + _UPLOADED
    + r"|the\s+original\s+(?:up-?load|up-?loaded\s+(?:image|photo|picture))"
    r"|(?P<loose>the\s+original\s+photo(?:graph)?))\b"
)


def _find_mentions(text: str, images: Sequence[ImageInfo], focus: int | None = None) -> list[Mention]:
    f = _Finder(text, images)
    count = len(images)

    # "the one before #3" / "the one before that" / "the previous one" / "second to last"
    def before(m: re.Match[str]) -> Mention:
        anchor = m.group("anchor")
        if anchor:
            digits = re.search(r"\d+", anchor)
            if digits:
                n = int(digits.group(0))
                if n not in f.numbers:
                    return f.by_numbers(m, "previous", [n])
                idx = f.numbers.index(n)
                if idx == 0:
                    return f.problem(m, "previous", f"#{n} is the first image; nothing comes before it.")
                return f.ok(m, "previous", [f.numbers[idx - 1]])
        if count == 1:
            only = f.numbers[0]
            return f.problem(
                m,
                "previous",
                f"There is only one image so far (#{only}), so there is no earlier one. "
                f"Did you mean #{only}?",
            )
        return f.by_position(m, "previous", -2, "previous image")

    def before_plain(m: re.Match[str]) -> Mention:
        if count == 1:
            only = f.numbers[0]
            return f.problem(
                m,
                "previous",
                f"There is only one image so far (#{only}), so there is no earlier one. "
                f"Did you mean #{only}?",
            )
        return f.by_position(m, "previous", -2, "previous image")

    anchor = (
        r"(?:#\s?\d+|(?:image|picture|pic|photo|number)\s+\d+|that(?:\s+one)?|it|this(?:\s+one)?"
        r"|(?:the\s+)?(?:last|latest)(?:\s+" + _NOUN + r")?)"
    )
    f.scan(
        r"\b(?:the\s+)?(?:one|image|picture|pic|photo)\s+before(?:\s+(?P<anchor>" + anchor + r"))?",
        before,
    )
    f.scan(
        r"\bthe\s+(?:previous|penultimate|second[\s-]+(?:to|from)[\s-]+last)(?:\s+(?P<anchor>"
        + _NOUN
        + r"))?\b",
        before_plain,
    )

    # "the other one": of two images, the one that is not the last; with more, the one before it
    f.scan(r"\bthe\s+other(?:\s+" + _NOUN + r"\b|" + _BOUNDARY + r")", before_plain)

    # "#-1", "#0": no image has that number; asked, never read as "the last one"
    f.scan(
        r"#\s?(?:-\s?\d+|0+)\b",
        lambda m: f.problem(
            m,
            "number",
            f"Images are numbered from #1, so there is no {m.group(0)}. {f.exists_text()} "
            "Which one did you mean?"
            if f.images
            else NO_IMAGES_QUESTION,
        ),
    )
    # "#3", "image 3", "images 2 and 3"; "a big number 8 on the cake" is a number in the picture
    f.scan(r"#\s?(\d+)", lambda m: f.by_numbers(m, "number", [int(m.group(1))]))
    f.scan(
        r"\b(?:images?|pictures?|pics?|photos?|(?<!\ba )(?<!\bthe )(?<!big )(?<!large )(?<!huge )(?<!giant )"
        r"(?<!gold )(?<!golden )numbers?|no\.)\s*#?\s*" + _NUM + r"(?:\s*(?:,|and|&|or)\s*#?\s*\d+\b)*\b",
        lambda m: f.by_numbers(
            m,
            "number",
            [_to_int(t) for t in re.findall(r"\d+|" + "|".join(NUMBER_WORDS), m.group(0).lower())],
        ),
    )

    # "the last three" / "the first two"
    def edge_run(m: re.Match[str]) -> Mention:
        k = _to_int(m.group("k"))
        if k > count:
            return f.problem(
                m,
                "last_n",
                f"There are only {count} images, not {k}: {list_images(images)}.",
            )
        picked = f.numbers[:k] if m.group("edge").lower() == "first" else f.numbers[-k:]
        return f.ok(m, "first_n" if m.group("edge").lower() == "first" else "last_n", picked)

    f.scan(
        r"\bthe\s+(?P<edge>first|last|latest)\s+(?P<k>"
        + _COUNT
        + r")\b(?:\s+(?:ones|images|pictures|pics))?",
        edge_run,
    )

    # "the last one", "the latest", "the most recent image", "the new one"
    f.scan(
        r"\b(?:the\s+(?:very\s+)?(?:last|latest|newest|most\s+recent|current|final|new)(?:\s+" + _NOUN + r")?"
        r"|(?:last|latest|newest|most\s+recent)\s+" + _NOUN + r")\b",
        lambda m: f.by_position(m, "last", -1, "image"),
    )

    # "my upload", "the uploaded photo", "my photo", "the photo I sent", "the original photo"
    def upload(m: re.Match[str]) -> Mention:
        uploads = [i.number for i in images if i.operation == "upload"]
        if uploads:
            return f.ok(m, "upload", uploads[-1:])
        if m.group("loose") and images:  # "the original photo" of generated images: the root
            return f.ok(m, "original", [_lineage_root(images, images[-1])])
        return f.problem(m, "upload", NO_UPLOAD_QUESTION)

    f.scan(_UPLOAD_MENTION, upload)

    # "the original"
    def original(m: re.Match[str]) -> Mention:
        if not images:
            return f.problem(m, "original", NO_IMAGES_QUESTION)
        return f.ok(m, "original", [_lineage_root(images, images[-1])])

    f.scan(r"\bthe\s+original(?:\s+" + _NOUN + r")?\b", original)

    # "the first of those", "the second of the new ones": counted in the last turn's batch
    def of_batch(m: re.Match[str]) -> Mention:
        k = ORDINALS[m.group("ord").lower()]
        batch = last_batch(images)
        if not batch:
            return f.problem(m, "ordinal", NO_IMAGES_QUESTION)
        if k > len(batch):
            return f.problem(
                m,
                "ordinal",
                f"The last turn made {len(batch)}: {', '.join(f'#{n}' for n in batch)}. "
                "Which one did you mean?",
            )
        return f.ok(m, "ordinal", [batch[k - 1]])

    f.scan(
        r"\bthe\s+(?P<ord>"
        + _ORD
        + r")(?:\s+"
        + _NOUN
        + r")?\s+of\s+(?:those|these|them|the\s+(?:new|last|latest)"
        r"(?:\s+(?:ones|batch|images|pictures|few))?)\b",
        of_batch,
    )

    # "the second one", "the third", "2nd image": right after a batch, counted in the batch (the
    # pictures just shown side by side); otherwise from the conversation's first image
    def ordinal(m: re.Match[str]) -> Mention:
        k = ORDINALS[m.group("ord").lower()]
        batch = last_batch(images)
        if len(batch) > 1 and (focus is None or focus in batch):
            if k <= len(batch):
                return f.ok(m, "ordinal", [batch[k - 1]])
            return f.problem(  # "the third one" of two just made: which third is it?
                m,
                "ordinal",
                f"The last turn made {len(batch)}: {', '.join(f'#{n}' for n in batch)}. "
                "Which one did you mean?",
            )
        return f.by_position(m, "ordinal", k - 1, f"{_ORDINAL_WORDS[k]} image")

    f.scan(r"\bthe\s+(?P<ord>" + _ORD + r")\s+" + _NOUN + r"\b", ordinal)
    f.scan(r"\bthe\s+(?P<ord>" + _ORD + r")\b" + _BOUNDARY, ordinal)
    f.scan(r"(?<!\ba )\b(?P<ord>" + _ORD + r")\s+(?:image|picture|pic|photo)\b", ordinal)

    # "both", "all of them", "them"
    def both(m: re.Match[str]) -> Mention:
        if count < 2:
            if not images:
                return f.problem(m, "both", NO_IMAGES_QUESTION)
            return f.problem(
                m, "both", f"There is only one image so far (#{f.numbers[0]}), so “both” needs another."
            )
        return f.ok(m, "both", f.numbers[-2:])

    f.scan(r"\bboth(?:\s+of\s+them|\s+(?:images|pictures|ones|of\s+those|of\s+these))?\b", both)
    f.scan(
        r"\b(?:all\s+(?:of\s+)?(?:them|these|those|(?:the|my|these|those)\s+(?:images|pictures|photos|ones)"
        r"|images|pictures|photos)|(?:every|each)\s+(?:image|picture|photo|one)(?:\s+so\s+far)?)\b",
        lambda m: f.by_numbers(m, "all", f.numbers) if images else f.problem(m, "all", NO_IMAGES_QUESTION),
    )
    f.scan(
        r"\b(?:them|these|those)(?:\s+(?:all|ones|images|pictures|two|three|four))?\b",
        lambda m: (
            f.ok(m, "batch", last_batch(images)) if images else f.problem(m, "batch", NO_IMAGES_QUESTION)
        ),
    )

    # "the fox one", "the one with the fox"
    def description(m: re.Match[str]) -> Mention:
        words = _trim_description(m.group("desc"))
        if not images:
            return f.problem(m, "description", NO_IMAGES_QUESTION)
        matches, _ = _match_description(images, words)
        if not matches:
            return f.problem(
                m,
                "description",
                f"I couldn't find an image matching “{words}”. {f.exists_text()} Which one did you mean?",
            )
        if len(matches) > 1:
            if len(matches) <= 4:
                listed = " or ".join(
                    f"#{n} ({describe_image(i)})" for n in matches for i in images if i.number == n
                )
            else:
                listed = "any of " + ", ".join(f"#{n}" for n in matches)
            return Mention(
                "description",
                m.group(0),
                m.start(),
                m.end(),
                candidates=tuple(matches),
                problem=f"“{m.group(0).strip()}” could be {listed}. Which one did you mean?",
            )
        return f.ok(m, "description", matches)

    def describable(m: re.Match[str]) -> bool:
        words = _trim_description(m.group("desc")).split()
        return bool(words) and words[0].lower() not in _NOT_DESCRIPTIVE | STOPWORDS

    for pattern in (
        r"\bthe\s+(?:one|image|picture|pic|photo)\s+(?:with|of|showing)\s+(?P<desc>(?:(?:the|a|an)\s+)?"
        r"[a-z][a-z'\-]*(?:\s+[a-z][a-z'\-]*){0,2})",
        r"\bthe\s+(?P<desc>[a-z][a-z'\-]*(?:\s+[a-z][a-z'\-]*){0,2}?)\s+" + _NOUN + r"\b",
    ):
        for match in re.finditer(pattern, text, flags=re.IGNORECASE):
            if describable(match) and not f.taken(match.start(), match.end()):
                mention = description(match)
                if pattern.startswith(r"\bthe\s+(?:one"):
                    # cut the span back to the words actually used, so "but at sunset" stays in the text
                    words = _trim_description(match.group("desc"))
                    last_word = words.split()[-1] if words else ""
                    cut = match.group(0).lower().rfind(last_word.lower()) + len(last_word)
                    end = match.start() + cut if last_word else match.end()
                    mention = Mention(
                        mention.kind,
                        text[match.start() : end],
                        match.start(),
                        end,
                        mention.numbers,
                        mention.candidates,
                        mention.problem,
                    )
                f.mentions.append(mention)

    # pronouns last: "this one", "that picture", "it"
    def pronoun(m: re.Match[str]) -> Mention:
        if focus is not None:
            return f.ok(m, "pronoun", [focus])
        return f.by_position(m, "pronoun", -1, "image")

    f.scan(r"\b(?:(?:this|that)\s+(?:one|image|picture|pic|photo)|it|this|that)\b", pronoun)
    return sorted(f.mentions, key=lambda m: m.start)


def resolve_references(
    text: str, images: Sequence[ImageInfo], *, default_to_last: bool = False, focus: int | None = None
) -> ReferenceResult:
    """Find every image the text points at; never guess between candidates.

    `default_to_last` is for edit-like requests: with nothing mentioned, the last image is the
    one the user means; with no images at all the result asks them to describe one instead.
    `focus` is the image the user went back to ("undo", "go back to the first one"): until a
    new image is made, "it" and an edit naming no image mean that one, not the newest.
    """
    images = sorted(images, key=lambda i: i.number)
    if focus is not None and not any(i.number == focus for i in images):
        focus = None
    found = _find_mentions(text, images, focus)
    if any(m.explicit for m in found):
        # "#2 but make it snowier": the pronoun means #2, not the last image
        found = [m for m in found if m.explicit]
    mentions = tuple(found)
    spans = tuple((m.start, m.end, m.kind == "pronoun") for m in _find_mentions(text, images, focus))
    base = ReferenceResult(status=RefStatus.NONE, mentions=mentions, text=text, _spans=spans)

    if not mentions:
        if not default_to_last:
            return base
        if not images:
            return replace(base, status=RefStatus.NO_IMAGES, question=NO_IMAGES_QUESTION)
        working = focus if focus is not None else images[-1].number
        return replace(base, status=RefStatus.RESOLVED, numbers=(working,), defaulted=True)

    if not images:
        # "my photo as a watercolor" in an empty conversation: ask for the photo, not a description
        asks_upload = any(m.kind == "upload" for m in mentions)
        question = NO_UPLOAD_QUESTION if asks_upload else NO_IMAGES_QUESTION
        return replace(base, status=RefStatus.NO_IMAGES, question=question)
    for mention in mentions:
        if mention.problem and not mention.candidates:
            return replace(base, status=RefStatus.MISSING, question=mention.problem)
    for mention in mentions:
        if mention.problem:
            return replace(
                base, status=RefStatus.AMBIGUOUS, question=mention.problem, candidates=mention.candidates
            )

    numbers: list[int] = []
    for mention in mentions:
        for n in mention.numbers:
            if n not in numbers:
                numbers.append(n)
    return replace(base, status=RefStatus.RESOLVED, numbers=tuple(numbers))


def asks_which_image(question: str) -> bool:
    """True for a reply that asks the user to pick between images ("… could be #1 or #3. Which
    one did you mean?"): the next message may be only the pick."""
    question = question.strip()
    return (
        question.endswith("?")
        and re.search(r"\bwhich\b", question, flags=re.IGNORECASE) is not None
        and len(set(re.findall(r"#\d+", question))) >= 2
    )
