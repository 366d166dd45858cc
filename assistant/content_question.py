"""Questions about what an image shows ("is there a dog in #2?", "what colour is the cabin?").

Atelier does not look at pixels, so such a question is answered from the prompt on record:
what the image was asked to show. Drawing the question ("is there a dog" as a picture) or
guessing would both mislead; quoting the prompt part that names the thing, or saying the
prompt never names it, is true and tells the user what to ask for next.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from assistant.one_line import one_line
from assistant.phrase_parsing import vocab
from storage.models import Image

_I = re.IGNORECASE
_A = r"(?:(?:a|an|any|some|the|my|your|our)\s+)?"
#: one to three words naming the thing, stopping before "in #2", "on it", "anywhere"
_THING = r"(?P<thing>[a-z][a-z'-]*(?:\s+(?!(?:in|on|at|of|anywhere|visible|there|here)\b)[a-z][a-z'-]*){0,2})"
#: where the image is named: "in #2", "in it", "in the second one", "in the picture"
_WHERE = (
    r"(?:\s+(?:in|on|inside|within|anywhere\s+in|visible\s+in)\b[^?]*|\s+(?:anywhere|visible|there|here))?"
)
_END = r"\s*[?.!]*\s*$"
#: "it", "#2", "the first one", "the cabin" before "have": the image the question is about
_IMAGE = (
    r"(?:#\s*\d+|it|this(?:\s+one)?|that(?:\s+one)?|they|these|those|(?:image|picture|number)\s+#?\d+"
    r"|the\s+[a-z]+(?:\s+[a-z]+)?)"
)

#: (what is asked, pattern); `thing` is what the question is about
CONTENT_QUESTIONS: tuple[tuple[str, str], ...] = (
    ("mention", rf"^(?:is|are)\s+there\s+{_A}{_THING}{_WHERE}{_END}"),
    (
        "mention",
        rf"^(?:does|do|did)\s+{_IMAGE}\s+(?:have|show|contain|include|feature)\s+{_A}{_THING}{_WHERE}{_END}",
    ),
    ("mention", rf"^(?:can|do|could)\s+(?:you|i|we)\s+see\s+{_A}{_THING}{_WHERE}{_END}"),
    ("where", rf"^where(?:'s|\s+is|\s+are|\s+was|\s+were)\s+{_A}{_THING}{_WHERE}{_END}"),
    (
        "colour",
        rf"^what\s+colou?rs?\s+(?:is|are|was|were)\s+(?:(?:the|its|their|his|her|my)\s+)?{_THING}{_WHERE}{_END}",
    ),
    ("count", rf"^how\s+many\s+{_THING}\s+(?:are|is|were|was)\s+(?:there|in|on|shown|visible)\b[^?]*{_END}"),
    (
        "which",
        r"^(?:which|what)\s+(?:one|ones|image|images|picture|pictures|pic|pics|number)\s+"
        rf"(?:has|have|had|shows?|showed|contains?|includes?|features?|is\s+the\s+one\s+with|"
        # "which one was at dawn?", "which ones are snowy?"
        rf"(?:is|are|was|were)(?:\s+(?:at|in|on|during|by|with))?)\s+{_A}{_THING}{_END}",
    ),
)
#: "is there a way to…", "where is the file?": questions about Atelier, not about the picture
_NOT_THINGS = vocab(
    """
    way ways anything something nothing everything option options setting settings limit undo
    chance problem difference file files folder path seed prompt prompts image images picture
    pictures photo photos it one ones more other another history button mode version versions
    model backend size error reason point need use
    """
)
_COLOURS = vocab(
    """
    red orange yellow green blue purple violet pink brown black white grey gray golden gold silver
    teal cyan magenta crimson scarlet amber beige ivory turquoise navy maroon lavender
    """
)
#: words that begin a noun phrase: what comes before them describes something else
_PHRASE_STARTS = vocab("a an the on in at of with by under over near and or from to behind beside")
_NUMBER_WORDS = vocab("one two three four five six seven eight nine ten twelve dozen single pair couple")


@dataclass(frozen=True)
class ContentQuestion:
    """What a question asks about an image's contents: `kind` is mention/where/colour/count."""

    kind: str
    thing: str


#: things counted by amount, not one by one: "any snow", never "a snow"
MASS_NOUNS = vocab(
    "snow rain fog mist haze water grass sand smoke fire moss ice steam light sunlight moonlight sunshine "
    "lightning wind furniture foliage hair text writing blood mud dust lava snowfall rainfall greenery"
)


def asked_content(question: str) -> ContentQuestion | None:
    """The thing a question asks about, or None when it is not a question about contents."""
    text = re.sub(
        r"^(?:(?:so|and|hey|ok(?:ay)?|hmm+|um+),?\s+)+", "", question.strip().replace("’", "'"), flags=_I
    )
    text = re.sub(r"^(?:please\s+)?(?:tell\s+me\s+)?", "", text, flags=_I)
    for kind, pattern in CONTENT_QUESTIONS:
        m = re.match(pattern, text, flags=_I)
        if m is None:
            continue
        thing = m.group("thing").lower().strip()
        if kind == "which" and re.search(r"(?:est|^(?:first|last|latest|newest|oldest|same))$", thing):
            continue  # "which one was the biggest?" compares the images; no prompt names "biggest"
        if not set(thing.split()) & _NOT_THINGS:
            return ContentQuestion(kind, thing)
    return None


def _stem(word: str) -> str:
    word = word.lower().strip("'")
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("ches", "shes", "xes", "sses")):
        return word[:-2]
    if word.endswith("s") and not word.endswith("ss") and len(word) > 3:
        return word[:-1]
    if re.search(r"[^aeiou]y$", word) and len(word) > 4:
        # "snowy", "foggy", "sunny": the thing the adjective says ("snow" is in "heavy snowfall")
        word = word[:-1]
        return word[:-1] if re.search(r"([^aeiou])\1$", word) else word
    return word


def _part_naming(prompt: str, thing: str) -> str | None:
    """The comma-separated part of the prompt that names the thing's head noun."""
    head = _stem(thing.split()[-1])
    for part in (p.strip() for p in prompt.split(",")):
        for word in (_stem(w) for w in re.findall(r"[a-z][a-z'-]*", part.lower())):
            # "snow" is in "heavy snowfall" and "a snowy street"; "cat" is not in "catalogue"
            if word == head or (len(head) >= 3 and word.startswith(head) and len(word) - len(head) <= 4):
                return part
    return None


def _words_before(part: str, thing: str) -> set[str]:
    """The words describing the thing ("red" in "a red fox on a mossy rock", for the fox, not the rock)."""
    words = re.findall(r"[a-z0-9][a-z0-9'-]*", part.lower())
    head = _stem(thing.split()[-1])
    for index, word in enumerate(words):
        if _stem(word).startswith(head):
            described: set[str] = set()
            for earlier in reversed(words[:index]):
                if earlier in _PHRASE_STARTS:
                    break
                described.add(earlier)
            return described
    return set()


def describe_content(image: Image, asked: ContentQuestion) -> str:
    """The prompt's answer to a content question about one image, quoted from the record."""
    thing = asked.thing
    last = thing.split()[-1]
    plural = _stem(last) != last or last in {"people", "children", "mice"} or last in MASS_NOUNS
    article = "" if plural else "an " if thing[:1] in "aeiou" else "a "
    if not image.prompt:
        source = (
            "an upload whose file carries no prompt" if image.operation == "upload" else "made with no prompt"
        )
        return (
            f"#{image.number} is {source}, so I can't say whether it shows {article}{thing}: "
            "I answer from the prompt on record, not by looking at the pixels."
        )
    whole = f"“{one_line(image.prompt, 300)}”"
    part = _part_naming(image.prompt, thing)
    if part is None:
        one, some = ("any", "some") if plural else ("one", "one")
        return (
            f"#{image.number}: its prompt doesn't mention {article}{thing}, so it was not asked to show {one}"
            f" (the prompt: {whole}). Say “add {article}{thing} to #{image.number}” to put {some} in."
        )
    before = _words_before(part, thing)
    said = f"its prompt has “{part}”"
    if asked.kind == "colour" and not before & _COLOURS:
        said += f", with no colour given for the {thing}"
    elif asked.kind == "count" and not (before & _NUMBER_WORDS or any(w.isdigit() for w in before)):
        said += f", with no number of {thing} given"
    return (
        f"#{image.number}: {said} (the whole prompt: {whole}). "
        "That is what it was asked to show; I go by the record, not the pixels."
    )


def describe_which(images: Sequence[Image], asked: ContentQuestion) -> str:
    """ "which one has the fox?": the images whose prompts name it, each with the words that do."""
    found = [
        (image, part)
        for image in images
        if image.prompt and (part := _part_naming(image.prompt, asked.thing))
    ]
    if not found:
        last = asked.thing.split()[-1]
        thing = asked.thing if _stem(last) != last or last in MASS_NOUNS else f"a {asked.thing}"
        return (
            f"No image's prompt here mentions {thing}. I go by the prompts on record, not the pixels; "
            "uploads have none."
        )
    lines = [f"- #{image.number}: “{one_line(part, 100)}”" for image, part in found]
    count = f"{len(found)} image{'s' if len(found) != 1 else ''}"
    return f"{count} with {asked.thing} in the prompt (from the record, not the pixels):\n" + "\n".join(lines)
