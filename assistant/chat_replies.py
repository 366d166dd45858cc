"""Conversation that is not a picture: small talk, questions, going back, complaints.

A wrong guess here costs a picture nobody asked for, so each table lists whole messages (or
whole openers) and anything more specific falls through to the image rules.
"""

from __future__ import annotations

import re

from assistant.phrase_parsing import strip_polite, vocab
from assistant.plan import Intent, PlannerContext
from assistant.rewrite import COLORS

_I = re.IGNORECASE

PRAISE_REPLY = (
    "Glad you like it! Tell me what to change next (“#2 but at sunset”, “make it snowier”, "
    "“three more like it”) or describe a new image."
)
#: a remark about the result, with no request in it
PRAISE = (
    r"(?:(?:oh|wow|ok(?:ay)?|yes|yeah|great)\s*[,!.]?\s*)?"
    r"(?:(?:that|this|it)(?:'?s|\s+is|\s+was|\s+looks)\s+(?:(?:so|really|very|just|absolutely)\s+)?)?"
    r"(?:perfect|great|awesome|amazing|beautiful|lovely|nice|cool|wonderful|excellent|fantastic|gorgeous|"
    r"brilliant|stunning|exactly(?:\s+(?:it|right|what\s+i\s+wanted))?|love\s+it|i\s+(?:really\s+)?(?:love|like)\s+"
    r"(?:it|this|that)(?:\s+(?:one|a\s+lot|very\s+much))?)"
    r"(?:\s*[,!.]*\s*(?:thanks|thank\s+you|ty))?[\s!.]*"
)
#: a reaction before a request ("cute! make it red", "thats good, make it look like a painting",
#: "love it, 2 more like this"): it asks for nothing, so the request after it is what is planned
_REACTION_LEAD = (
    # each interjection is one word and one run of separators, so the scan never backtracks between them
    r"^(?:(?:oh|wow|aww+|ooh+|omg|yes|yeah|great)[\s,!.]+)*(?:(?:that'?s|thats|it'?s|its|this\s+is|so|very|"
    r"too|how|really)\s+)*(?:perfect|great|awesome|amazing|beautiful|lovely|nice(?:\s+one)?|cool|wonderful|"
    r"excellent|fantastic|gorgeous|brilliant|stunning|cute|adorable|good|sweet|neat|not\s+bad|wow+|yay|"
    r"ha(?:ha)+|lol|thanks|thank\s+you|ty|hmm+|ok(?:ay)?|alright|love\s+it|i\s+(?:really\s+)?(?:love|like)\s+"
    r"(?:it|this|that)(?:\s+(?:one|a\s+lot))?)\s*[,!.]+\s*"
    r"(?=(?:now|but|can|could|would|please|pls|make|let'?s|so|and|then|try|do|give|add|put|change|turn|show|"
    r"draw|one|another|more|again|same|\d|two|three|four|a\s+few|some)\b)"
)
#: emoji and pictographs at either end of a message decorate it ("make it pink 💖", "😍 love it")
_EDGE_EMOJI = "[\U0001f000-\U0001faff\u2600-\u27bf\u2b00-\u2bff\ufe0f\u200d\u20e3\\s]+"


#: emoji that say "not that": an answer of only these is a complaint, any other only-emoji one praise
_DISLIKE_EMOJI = "👎😞😕🙁☹😢😡😠🤢🤮😬😐😑🙄"


def emoji_reaction(text: str) -> str | None:
    """ "praise" or "complaint" for a message of only emoji ("👍", "😍😍", "👎"), else None."""
    if not text.strip() or not re.fullmatch(_EDGE_EMOJI, text):
        return None
    return "complaint" if any(c in _DISLIKE_EMOJI for c in text) else "praise"


def _without_edge_emoji(text: str) -> str:
    """The text without emoji and spaces at its ends: one pass from each end, linear on any input."""
    start, end = 0, len(text)
    while start < end and re.fullmatch(_EDGE_EMOJI, text[start]):
        start += 1
    while end > start and re.fullmatch(_EDGE_EMOJI, text[end - 1]):
        end -= 1
    return text[start:end]


#: chat spellings of the words the rules read ("moar snow", "bigger pls")
_CHAT_SPELLINGS = {"moar": "more", "pls": "please", "plz": "please", "plox": "please", "thx": "thanks"}


def without_reaction(text: str) -> str:
    """The request in a message, without emoji at its ends and a reaction before it."""
    trimmed = _without_edge_emoji(text)
    if not trimmed.strip():
        return text  # only emoji: a reaction of its own, answered as such
    spelled = re.sub(
        r"\b(?:" + "|".join(_CHAT_SPELLINGS) + r")\b",
        lambda m: _CHAT_SPELLINGS[m.group(0).lower()],
        trimmed.strip(),
        flags=_I,
    )
    return re.sub(_REACTION_LEAD, "", spelled, count=1, flags=_I) or spelled


#: questions about using Atelier well, each answered in words (never drawn, never an edit)
HOW_TO_ANSWERS: tuple[tuple[str, str], ...] = (
    (
        r"\bhow\s+(?:do|can|could|should)\s+i\s+(?:get|make|have)\s+(?:better|nicer|good|great|best)\s+"
        r"(?:results?|images?|pictures?|outputs?)\b|\btips?\s+for\s+(?:better|good)\b",
        "Say the subject, where it is, the light and the style (“a red fox on a mossy rock at dawn, "
        "watercolor”), then change one thing at a time (“make it snowier”, “from above”). Keep a seed "
        "you like and compare settings on it (“#3 with seed 42”, “40 steps”, “cfg 9”), and ask for a "
        "few at once (“4 variations of #3”). The offline sketch renderer draws only keywords: an "
        "OpenAI key or a local diffusers model draws the real picture.",
    ),
    (
        r"\b(?:connect|use|set\s*up|add|install|plug\s+in|switch\s+to)\s+(?:my\s+own|my|a|an|another|other|"
        r"a\s+local|a\s+real)\s+(?:[a-z\-]+\s+){0,2}(?:model|gpu|checkpoint|stable\s+diffusion|api\s+key|key|"
        r"backend)\b",
        "Set it in the environment and restart Atelier: a local diffusers model with "
        'ATELIER_DIFFUSERS_MODEL=/path/to/model-folder (pip install -e ".[diffusers]"; it runs on your '
        "GPU when torch sees one), or the OpenAI Images API with OPENAI_API_KEY. `atelier config` "
        "shows what is in use.",
    ),
    (
        r"\b(?:commercial(?:ly)?|licen[cs]e[ds]?|copyright(?:ed)?|royalt(?:y|ies))\b[^?]{0,80}\?|\bcan\s+i\s+sell\b",
        "Atelier puts no terms on the images you make; the backend's do apply: OpenAI's usage "
        "policies for its images, a local model's own licence (for example CreativeML OpenRAIL for "
        "Stable Diffusion 1.5). The offline sketches are yours.",
    ),
)

#: "which one is the best?": a judgement Atelier does not make (it does not look at the pictures)
OPINION = (
    r"(?:so\s+|ok(?:ay)?[,\s]+)?(?:(?:which|what)(?:\s+(?:one|image|picture|version|of\s+(?:them|these|those)))?"
    r"(?:'s|\s+is|\s+looks|\s+do\s+you\s+(?:like|prefer|think\s+is))\s+(?:the\s+)?"
    r"(?:best|better|nicest|prettiest|most\s+\w+|your\s+favou?rite)(?:\s+one)?"
    r"|what\s+do\s+you\s+think(?:\s+of\s+(?:it|them|this|these|#\d+))?|do\s+you\s+like\s+(?:it|them|this|#\d+))"
    r"[\s?!.]*"
)
OPINION_REPLY = (
    "That's yours to judge: I don't look at the pictures, I keep the record of how each was made. "
    "Pick one by number and go on from it (“variations of {0}”, “{0} but warmer”, “upscale {0}”)."
)

_SMALL_TALK_KINDS: tuple[tuple[str, str], ...] = (
    (
        "thanks",
        r"(?:thanks?|thank\s+you|thx|ty|cheers|much\s+appreciated|appreciate\s+it)"
        r"(?:\s+(?:so|very)\s+much|\s+a\s+lot|\s+again|\s+a\s+bunch)?",
    ),
    (
        "bye",
        r"(?:bye(?:\s+bye)?|goodbye|see\s+(?:you|ya)(?:\s+later)?|cya|later|good\s*night|that'?s\s+all|i'?m\s+done)",
    ),
    (
        "hello",
        r"(?:good\s+(?:morning|afternoon|evening|day)|hi+|hello+|hey+|yo|howdy|greetings|what'?s\s+up|sup)"
        r"(?:\s+(?:there|atelier|again))?",
    ),
    (
        "presence",
        r"(?:are\s+you\s+(?:there|here|awake|alive|working|ok(?:ay)?)|you\s+there|anyone\s+there|"
        r"is\s+(?:this|it)\s+working|does\s+(?:this|it)\s+work|test(?:ing)?(?:\s+\d+)*|ping|"
        r"how\s+are\s+you(?:\s+doing)?|who\s+are\s+you|who\s+made\s+you)",
    ),
    (
        "no",
        r"(?:no+|nope|nah|not\s+really|never\s*mind|nevermind|forget\s+(?:about\s+)?(?:it|that|this)|"
        r"(?:scrap|scratch|ignore|skip|drop)\s+(?:that|this|it))",
    ),
    (
        "ack",
        r"(?:ok(?:ay)?|k+|alright|all\s+right|sure|fine|yes|yeah|yep|yup|ya|got\s+it|i\s+see|right|understood|"
        r"noted|why\s+not|sounds\s+good|go\s+on)",
    ),
    (
        "praise",
        r"(?:cool|nice|great|awesome|amazing|perfect|beautiful|lovely|wonderful|excellent|fantastic|gorgeous|"
        r"brilliant|stunning|love\s+it|i\s+love\s+(?:it|this|that)|so\s+good|good\s+job|well\s+done)",
    ),
    ("laugh", r"(?:lol+|lmao|rofl|ha(?:ha)+|he(?:he)+|ha|xd|:\)|:d|;\))"),
    ("hmm", r"(?:h+m+|u+m+|u+h+|e+r+m*|well|so|oh|ah|wow|huh|interesting|\.\.\.)"),
)
_ANY_SMALL_TALK = "(?:" + "|".join(p for _, p in _SMALL_TALK_KINDS) + ")"
SMALL_TALK_CHUNK = _ANY_SMALL_TALK + r"(?:\s+" + _ANY_SMALL_TALK + r")*"
#: each kind's answer, and whether it is HELP (the agent then draws nothing either) or CLARIFY
SMALL_TALK_REPLIES: dict[str, tuple[Intent, str]] = {
    "thanks": (
        Intent.HELP,
        "You're welcome! Tell me what to change next (“#2 but at sunset”, “make it snowier”) or describe a "
        "new image.",
    ),
    "bye": (Intent.HELP, "Bye! Every image and how it was made stays here for next time."),
    "hello": (
        Intent.HELP,
        "Hi! Describe an image and I'll make it (“a cozy cabin at night”), or say “help” to see everything "
        "I can do.",
    ),
    "presence": (
        Intent.HELP,
        "I'm here: Atelier, an assistant that makes and changes images. Describe one (“a red fox in the "
        "snow”), or say “help” to see everything I can do.",
    ),
    "no": (Intent.CLARIFY, "No problem. What would you like instead? Describe an image or a change to make."),
    "ack": (Intent.CLARIFY, "OK. What next? Describe an image, or a change (“#2 but at sunset”)."),
    "praise": (Intent.CLARIFY, PRAISE_REPLY),
    "laugh": (Intent.CLARIFY, "Glad it amused you! What should I make or change next?"),
    "hmm": (Intent.CLARIFY, "Take your time. Describe an image or a change when you're ready."),
}


def small_talk_kind(text: str) -> str | None:
    """The kind of a message made only of small talk ("ok", "thank you so much", "lol"), else None."""
    normal = text.lower().replace("’", "'").strip()
    chunks = [c.strip() for c in re.split(r"[,.!?;]+|\s+-\s+", normal) if c.strip()]
    if not chunks or not all(re.fullmatch(SMALL_TALK_CHUNK, c) or re.fullmatch(PRAISE, c) for c in chunks):
        return None
    for kind, pattern in _SMALL_TALK_KINDS:  # the table's order is the order of importance
        if any(re.search(r"(?:^|\s)" + pattern + r"(?:\s|$)", c) for c in chunks):
            return kind
    return "praise"  # words only the praise pattern knows


#: other media: Atelier makes still images only
OTHER_MEDIA = (
    r"^(?:make|create|generate|render|produce|do|draw)\s+(?:me\s+)?(?:an?\s+|some\s+)?"
    r"(?:videos?|animations?|animated\s+\w+|gifs?|movies?|films?|clips?|songs?|music|audio|sound|voices?)"
    r"(?!\s+(?:game|poster|still|camera|player|night|theater|theatre|star))\b"
    r"|^animate\b|\bmake\s+(?:it|this|that|#\s?\d+)\s+(?:move|animated)\b"
    r"|\b(?:make|turn)\s+(?:it|this|that|them|#\s?\d+)\s+(?:in)?(?:to\s+)?(?:an?\s+)?(?:animated\s+)?"
    r"(?:gif|video|animation|movie|clip|film)s?\b(?!\s+(?:game|poster|still|camera|player|night|theater|theatre|star|"
    r"scene|set|frame|look|style|grain|noir))"
)
OTHER_MEDIA_REPLY = (
    "I make still images only: no video, animation or sound. I can create a picture, change it, make "
    "variations or a sequence of stills (“3 images of a fox running”)."
)
COMBINE = r"\b(?:combine|merge|blend|mix|fuse|mash\s*up|stitch|put\s+together|join)\b"
COMBINE_REPLY = (
    "I can't combine images: every change starts from one image. Describe the combined picture as a new "
    "image (“a cabin and a red fox at night”), or start from one of them: “use {} as a starting point for …”."
)

#: questions about an image, by opener: (question kind, pattern on the message without polite words)
IMAGE_QUESTIONS: tuple[tuple[str, str], ...] = (
    (
        "lineage",
        r"^how\s+(?:did|do|have|was|were)\s+(?:you|i|we|it|they)\s+(?:make|made|create|created|generate|"
        r"generated|get|got|draw|drew|render|rendered|do|did|come\s+up\s+with)\b",
    ),
    (
        "lineage",
        r"^what\s+(?:did|have)\s+(?:you|i|we)\s+(?:change|changed|do|did|edit|edited|modify|alter)\b",
    ),
    ("lineage", r"^what\s+(?:was|were)\s+changed\b"),
    ("lineage", r"^(?:what|which)(?:'s|\s+is|\s+was)\s+(?:the\s+)?(?:parent|source|origin|base)\b"),
    (
        "prompt",
        r"^(?:what|which)(?:'s|\s+is|\s+was)\s+(?:the\s+)?difference\b|^how\s+(?:do|does|are)\b.*\bdiffer",
    ),
    ("prompt", r"^(?:compare|describe|explain)\b"),
    ("prompt", r"^tell\s+me\s+(?:more\s+)?about\b"),
    ("prompt", r"^what(?:'s|\s+is|\s+was|\s+are)\s+(?:in|on)\b"),
    ("prompt", r"^what\s+(?:style|kind\s+of\s+style|look|medium|does\b.*\bshow)\b"),
    ("prompt", r"^why\b"),
    ("prompt", r"^show\s+me\b"),
)
#: openers that are questions only with an image named and nothing else ("show me #2", not "show me a dragon")
NEEDS_ONLY_A_REFERENCE = ("compare", "describe", "explain", "tell", "show")
QUESTION_WORDS = vocab(
    """
    how did do have was were you i we it they make made create created generate generated get got draw
    drew render rendered come what which change changed edit edited modify alter parent source origin
    base difference between compare describe explain tell about more in on style kind look medium
    show shows why s up
    """
)


def still_there(number: int) -> str:
    """Images are never deleted: going back makes the earlier image the one the next change edits."""
    return (
        f"Back to #{number}: nothing is deleted, #{number} is still there, and your next change "
        f"(for example “make it snowier”) edits it. Say “variations of #{number}” for new takes on it."
    )


def undo_target(context: PlannerContext) -> int | None:
    """What "undo" goes back to: the working image's source, else the image made before it.

    The working image is the one an earlier undo went back to, so undo after undo keeps
    walking back, and stops at the first image instead of wrapping round to the newest.
    """
    current = context.last
    if current is None:
        return None
    if current.rerun_of is not None and context.image(current.rerun_of) is not None:
        return current.rerun_of  # "40 steps" made #6 as #5 again: undo shows #5
    if current.parent_number is not None and context.image(current.parent_number) is not None:
        return current.parent_number
    earlier = [info.number for info in context.images if info.number < current.number]
    return earlier[-1] if earlier else None


def nothing_before(first: int) -> str:
    """The reply to an undo at the first image: it stays the working image."""
    return f"There is nothing before #{first}: it is the first image, and the one your next change edits."


def forward_again(number: int) -> str:
    """The reply to "redo": the undone image is the working image again."""
    return f"Forward to #{number} again: your next change (for example “make it snowier”) edits it."


#: "redo" / Ctrl+Y after an undo (bare: "redo the sky" is a request)
REDO_CUE = (
    r"(?:redo|ctrl\s*\+?\s*(?:y|shift\s*\+?\s*z))"
    r"(?:\s+(?:that|it|the\s+last\s+(?:change|edit|step)|(?:the|that)\s+(?:change|edit)))?[\s.!]*"
)


def redo_target(context: PlannerContext) -> int | None:
    """What "redo" after an undo returns to: the step from the working image towards the newest.

    Undo went to a source (its child on the way to the newest image is what it undid) or to
    the image made before (the image made after it). None when nothing was undone.
    """
    if context.focus is None or not context.images:
        return None
    numbers = {info.number: info for info in context.images}
    step: int | None = context.images[-1].number
    while step is not None and step in numbers:
        parent = numbers[step].parent_number
        if parent == context.focus:
            return step
        step = parent
    later = [info.number for info in context.images if info.number > context.focus]
    return later[0] if later else None


#: openers (on the message without polite words) that point back at an earlier image
BACK_CUES: tuple[str, ...] = (
    r"^(?:undo|revert|roll\s*back|ctrl\s*\+?\s*z)\b(?:\s+(?:that|this|it|the\s+last\s+(?:change|edit|step|one)"
    r"|last\s+(?:change|edit|step)|(?:the|that|this)\s+(?:change|edit)))?",
    r"^(?:(?:go|get|come|switch|step|revert|return)\s+)?back(?:\s+to)?\b",
    r"^(?:return|revert|switch)\s+to\b",
    # "let's go with #3", "I'll stick with the second one": a pick to go on from
    r"^(?:let'?s\s+|i'?ll\s+|i\s+will\s+)?(?:go|stick|continue|carry\s+on|work|stay)\s+with\b",
    # "I liked the first fox better", "… better, give it a hat": a pick, maybe with a change after it
    r"^i\s+(?:liked|like|loved|prefer(?:red)?)\s+(?=[^,;]+?\b(?:better|more|instead)\s*(?:[.!]*$|[,;]|\s(?:and|so|but)\s))",
    r"^i\s+prefer(?:red)?\b",
    r"^(?:i\s+want|give\s+me)\s+(?=(?:the\s+)?(?:previous|original|first|earlier|old|other)\b)",
)
BACK_WORDS = vocab("better more instead was were looked one version change edit step last earlier old")
UNDO_CUE = r"^(?:undo|revert|roll\s*back|ctrl)"

#: complaints with no change in them: ask what to change instead of drawing the complaint
COMPLAINTS: tuple[str, ...] = (
    r"^(?:no+|nope|nah|hmm+|ugh|meh)?[\s,.!]*i\s+(?:don'?t|do\s+not|didn'?t|did\s+not)\s+"
    r"(?:like|love|want|mean|ask\s+for)\b",
    r"^(?:no+|nope|nah|ugh)?[\s,.!]*(?:i\s+hate\s+(?:it|this|that)|i\s+meant\b|not\s+(?:what|quite|right|like\s+that)\b)",
    r"^(?:no+|nope|ugh)?[\s,.!]*(?:that|this|it)(?:'s|\s+is|\s+isn'?t|\s+looks|\s+was)\s+(?:(?:so|really|very|pretty|"
    r"kind\s+of|kinda|a\s+bit|all)\s+)?(?:wrong|bad|ugly|terrible|awful|horrible|weird|off|strange|boring|worse|"
    r"not\s+(?:good|right|great|it|what\s+i)|what\s+i\s+(?:wanted|meant))\b",
    r"^(?:ugh|meh|yuck|ew+|wrong|bad|worse|no\s+good|not\s+good|that'?s\s+wrong|try\s+something\s+else)\s*[.!]*$",
    # "fix it", "can you fix this?": something is wrong, and only the user knows what
    r"^(?:please\s+)?fix\s+(?:it|this|that|#\s?\d+)(?:\s+(?:please|pls))?\s*[.!?]*$",
)
#: "I don't want snow", "I don't want any people in it"
DONT_WANT = (
    r"i\s+(?:don'?t|do\s+not)\s+want\s+(?:any\s+)?(?P<what>(?!it\b|this\b|that\b|them\b)[a-z].*?)"
    r"(?:\s+(?:in\s+(?:it|there|the\s+(?:image|picture))|anymore|any\s+more))?\s*[.!]*"
)
COMPLAINT_REPLY = (
    "Sorry it isn't right. What should I change in #{n}? For example “#{n} but at sunset”, “remove the "
    "snow”, “make the fox bigger”, “try again” for another seed — or describe the whole picture again."
)

#: "that's too dark" asks for the opposite: the change to make, by adjective
_OPPOSITES: dict[str, str] = {
    "dark": "brighter",
    "dim": "brighter",
    "gloomy": "brighter",
    "bright": "darker",
    "light": "darker",
    "blurry": "sharper",
    "fuzzy": "sharper",
    "soft": "sharper",
    "busy": "simpler",
    "cluttered": "simpler",
    "plain": "more detailed",
    "simple": "more detailed",
    "small": "bigger",
    "tiny": "bigger",
    "big": "smaller",
    "large": "smaller",
    "saturated": "less saturated",
    "colorful": "less colorful",
    "colourful": "less colourful",
    "vivid": "less saturated",
    "dull": "more saturated",
    "warm": "cooler",
    "cold": "warmer",
    "cool": "warmer",
    "contrasty": "less contrast",
    "harsh": "softer",
}
_WEATHER_ADJECTIVES = vocab("snowy rainy foggy misty hazy cloudy stormy windy sunny")
_TOO = (
    r"^(?:(?P<subject>it|that|this|(?:this|that)\s+one|the\s+[a-z]+(?:\s+[a-z]+)?|#\s?\d+|image\s+\d+)"
    r"(?:'s|’s|\s+is|\s+are|\s+looks?|\s+seems?|\s+feels?|\s+got)\s+)?"
    r"(?:(?:a\s+(?:bit|little)|way|much|slightly|kind\s+of|kinda|far|just|still|now)\s+)*"
    r"too\s+(?P<adj>[a-z]+)(?:\s+(?:now|still|for\s+me))?\s*[.!]*$"
    r"|^(?:make\s+(?P<subject2>it|that|this|the\s+[a-z]+|#\s?\d+)\s+)?(?:a\s+(?:bit|little)\s+)?"
    r"(?:less|not\s+so|not\s+as)\s+(?P<adj2>dark|dim|gloomy|bright|blurry|fuzzy|busy|cluttered|warm|cold)\s*[.!]*$"
)


def opposite_request(text: str) -> str | None:
    """ "that's too dark" → "make it brighter"; "the fox is too small" → "make the fox bigger"."""
    m = re.match(_TOO, strip_polite(text).replace("’", "'"), flags=_I)
    if m is None:
        return None
    adj = (m.group("adj") or m.group("adj2")).lower()
    subject = (m.group("subject") or m.group("subject2") or "it").lower()
    if re.fullmatch(r"(?:it|that|this|(?:this|that)\s+one)", subject):
        subject = "it"
    if adj in _OPPOSITES:
        change = _OPPOSITES[adj]
    elif adj in COLORS or adj in _WEATHER_ADJECTIVES:
        change = f"less {adj}"
    else:
        return None
    return f"make {subject} {change}"


#: "do the same to #1", "same for #2", "now #3 too": the last change again, on another image
SAME_AGAIN = (
    r"^(?:(?:do|apply|make)\s+)?(?:the\s+)?same(?:\s+(?:thing|change|edit))?\s+(?:to|for|on|with)\b"
    r"|^(?:do|apply)\s+(?:that|this|it)(?:\s+again)?\s+(?:to|for|on|with)\b"
)
