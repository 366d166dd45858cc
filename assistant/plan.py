"""The contract between planners and the orchestrator.

Every planner (the offline rules, the LLM agent) turns one user message plus a structured
list of the conversation's images into a `Plan`; the orchestrator executes plans and never
parses text itself. Keeping the types here, free of any backend or database import, lets
both planners be tested against the same table of cases (`planner_cases.json`).

Plans refer to images by their conversation NUMBER (what users type as "#2"), never by
database id, and only to numbers that exist in `PlannerContext.images`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from tools.base import BACKEND_OPERATIONS, Operation


class Intent(StrEnum):
    """What the user wants this turn; reply-only intents never call a backend."""

    GENERATE = "generate"
    EDIT = "edit"
    INPAINT = "inpaint"
    VARIATION = "variation"
    IMG2IMG = "img2img"
    UPSCALE = "upscale"
    TRANSFORM = "transform"
    REGENERATE = "regenerate"
    DESCRIBE = "describe"
    HELP = "help"
    CLARIFY = "clarify"
    #: a request Atelier will not carry out from chat (deleting, prompt injection); `reply` says why
    REFUSE = "refuse"

    @property
    def is_reply_only(self) -> bool:
        """True when the orchestrator only has to show `Plan.reply`."""
        return self in REPLY_ONLY_INTENTS


REPLY_ONLY_INTENTS: frozenset[Intent] = frozenset(
    {Intent.DESCRIBE, Intent.HELP, Intent.CLARIFY, Intent.REFUSE}
)

#: The backend operation each image-making intent runs. REGENERATE is absent on purpose: it
#: re-runs whatever operation made its target, so the planner fills `Plan.operation` itself.
INTENT_OPERATIONS: Mapping[Intent, Operation] = {
    Intent.GENERATE: Operation.GENERATE,
    Intent.EDIT: Operation.EDIT,
    Intent.INPAINT: Operation.INPAINT,
    Intent.VARIATION: Operation.VARIATION,
    Intent.IMG2IMG: Operation.IMG2IMG,
    Intent.UPSCALE: Operation.UPSCALE,
    Intent.TRANSFORM: Operation.TRANSFORM,
}

#: Question kinds a DESCRIBE plan answers.
QUESTION_KINDS: frozenset[str] = frozenset({"prompt", "lineage", "list", "params"})


@dataclass(frozen=True)
class ImageInfo:
    """One image of the conversation as the planner sees it each turn.

    This structured list replaces chat memory: a planner that reads "#3" looks it up here
    instead of trusting whatever an earlier message said about it.
    """

    number: int
    id: int
    operation: str
    parent_number: int | None
    prompt: str
    instruction: str | None
    width: int
    height: int
    seed: int | None
    negative_prompt: str = ""
    style: str | None = None
    #: the assistant message that brought the image: images of one turn share it ("them", "again")
    message_id: int | None = None
    #: the image this one re-ran ("40 steps" of #5 is #5 again, from #5's own source): what
    #: "undo" goes back to, since its parent is #5's parent
    rerun_of: int | None = None


@dataclass(frozen=True)
class PlannerContext:
    """Everything a planner may know besides the text: images, attachments, backend, settings."""

    images: tuple[ImageInfo, ...] = ()
    #: an image is attached to this message (the source of img2img / inpaint)
    has_upload: bool = False
    #: a mask is attached to this message (white = repaint)
    has_mask: bool = False
    #: what the active model backend can do; upscale/transform are model-free and always possible
    capabilities: frozenset[Operation] = BACKEND_OPERATIONS
    backend_takes_negative_prompt: bool = True
    #: default style preset from settings, used when the message names none
    style: str | None = None
    #: the "use my prompt exactly" setting
    verbatim: bool = False
    default_n: int = 1
    max_n: int = 4
    #: the size a fresh image gets: "16:9" keeps about this area in the new shape
    default_size: tuple[int, int] = (512, 512)
    #: the image the user went back to ("undo", "go back to #1") when no image was made since:
    #: the one "it" and an edit naming no image mean
    focus: int | None = None
    #: the request the last reply asked "which image?" about ("the cabin one, add a moon"), so
    #: an answer of just "the second one" carries it out
    pending_request: str | None = None

    def image(self, number: int) -> ImageInfo | None:
        for info in self.images:
            if info.number == number:
                return info
        return None

    @property
    def last(self) -> ImageInfo | None:
        """The working image: the one the user went back to, else the newest."""
        if self.focus is not None and (chosen := self.image(self.focus)) is not None:
            return chosen
        return self.images[-1] if self.images else None

    def can(self, operation: Operation) -> bool:
        """Model-free operations are always available; the rest must be declared by the backend."""
        return operation not in BACKEND_OPERATIONS or operation in self.capabilities


@dataclass(frozen=True)
class Plan:
    """One turn's decision. Field names are stored as JSON (`to_dict`), so keep them stable."""

    intent: Intent
    #: image NUMBERS the plan works on (sources of edits, images asked about), never invented
    targets: tuple[int, ...] = ()
    #: the user's words, as typed
    instruction: str = ""
    #: the prompt the backend gets; "" when not applicable (transforms, replies)
    prompt: str = ""
    negative_prompt: str = ""
    n: int = 1
    #: how far img2img / variation may move from the source (0 = same, 1 = ignore it)
    strength: float | None = None
    #: for TRANSFORM / UPSCALE: a name from tools.transforms ("upscale", "rotate", …) and its args
    transform: str | None = None
    transform_args: Mapping[str, Any] = field(default_factory=dict)
    #: draw a fresh seed instead of reusing the target's (regenerate, variation)
    new_seed: bool = False
    #: an explicit seed the user asked for ("seed 42")
    seed: int | None = None
    style: str | None = None
    #: the prompt is the user's text, not rewritten
    verbatim: bool = False
    #: the whole answer for reply-only intents, otherwise an optional preface (e.g. "capped at 4")
    reply: str | None = None
    #: for DESCRIBE: one of QUESTION_KINDS
    question_kind: str | None = None
    #: the backend operation to run; filled from the intent when left None (REGENERATE sets it)
    operation: Operation | None = None
    #: the image attached to this message is the source (img2img / inpaint / transform of an upload)
    use_upload: bool = False
    #: (width, height) for a fresh generation; None = the settings' default size
    size: tuple[int, int] | None = None
    #: sampling steps and guidance the user asked for this turn ("40 steps"); None = the settings'
    steps: int | None = None
    guidance: float | None = None
    #: the sampler the user named ("euler a", "DPM++ 2M Karras"), as typed; the backend checks it
    sampler: str | None = None
    #: a reply that goes back to an earlier image ("undo") makes it the working image
    focus: int | None = None
    #: an edit of several images at once ("make them all pixel art"): what differs per target
    #: number, each its own "prompt", "negative_prompt" and "style"; the fields above are the first's
    per_target: Mapping[int, Mapping[str, Any]] = field(default_factory=dict)
    #: several pictures from one message, one image each, each its own "prompt", "negative_prompt"
    #: and "style" ("the fox in 4 styles"); `n` is their count; empty: the plan is one picture
    alternatives: tuple[Mapping[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if self.operation is None and self.intent in INTENT_OPERATIONS:
            object.__setattr__(self, "operation", INTENT_OPERATIONS[self.intent])
        object.__setattr__(self, "targets", tuple(self.targets))
        object.__setattr__(self, "transform_args", dict(self.transform_args))
        object.__setattr__(self, "per_target", {int(k): dict(v) for k, v in self.per_target.items()})
        if self.size is not None:
            object.__setattr__(self, "size", (int(self.size[0]), int(self.size[1])))
        object.__setattr__(self, "alternatives", tuple(dict(a) for a in self.alternatives))

    def each_alternative(self) -> tuple[Plan, ...]:
        """One plan per picture asked for: each alternative alone, one image; else the plan itself."""
        if not self.alternatives:
            return (self,)
        return tuple(replace(self, **alternative, n=1, alternatives=()) for alternative in self.alternatives)

    def for_target(self, number: int) -> Plan:
        """The plan as it applies to one of its targets: its own prompt when they differ."""
        own = self.per_target.get(number)
        return replace(self, **own) if own else self

    @property
    def is_reply_only(self) -> bool:
        return self.intent.is_reply_only

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict with a fixed key set, for `messages.plan`."""
        return {
            "intent": self.intent.value,
            "targets": list(self.targets),
            "instruction": self.instruction,
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "n": self.n,
            "strength": self.strength,
            "transform": self.transform,
            "transform_args": dict(self.transform_args),
            "new_seed": self.new_seed,
            "seed": self.seed,
            "style": self.style,
            "verbatim": self.verbatim,
            "reply": self.reply,
            "question_kind": self.question_kind,
            "operation": self.operation.value if self.operation is not None else None,
            "use_upload": self.use_upload,
            "size": list(self.size) if self.size is not None else None,
            "steps": self.steps,
            "guidance": self.guidance,
            "sampler": self.sampler,
            "focus": self.focus,
            "per_target": {str(k): dict(v) for k, v in self.per_target.items()},
            "alternatives": [dict(a) for a in self.alternatives],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Plan:
        """Inverse of `to_dict`; unknown keys are ignored so old rows stay readable."""
        operation = data.get("operation")
        return cls(
            intent=Intent(data["intent"]),
            targets=tuple(int(t) for t in data.get("targets", ())),
            instruction=str(data.get("instruction", "")),
            prompt=str(data.get("prompt", "")),
            negative_prompt=str(data.get("negative_prompt", "")),
            n=int(data.get("n", 1)),
            strength=data.get("strength"),
            transform=data.get("transform"),
            transform_args=dict(data.get("transform_args") or {}),
            new_seed=bool(data.get("new_seed", False)),
            seed=data.get("seed"),
            style=data.get("style"),
            verbatim=bool(data.get("verbatim", False)),
            reply=data.get("reply"),
            question_kind=data.get("question_kind"),
            operation=Operation(operation) if operation else None,
            use_upload=bool(data.get("use_upload", False)),
            size=(int(size[0]), int(size[1])) if (size := data.get("size")) else None,
            steps=int(steps) if (steps := data.get("steps")) is not None else None,
            guidance=float(guidance) if (guidance := data.get("guidance")) is not None else None,
            sampler=str(sampler) if (sampler := data.get("sampler")) else None,
            focus=int(focus) if (focus := data.get("focus")) is not None else None,
            per_target={int(k): dict(v) for k, v in (data.get("per_target") or {}).items()},
            alternatives=tuple(dict(a) for a in data.get("alternatives") or ()),
        )


#: When the backend lacks an operation, these may stand in for it, best first. Instruction edits
#: and variations can be done as image-to-image from the source with the changed prompt; an
#: image-to-image request can be an instruction edit. Inpainting and generation have no stand-in.
FALLBACKS: Mapping[Operation, tuple[Operation, ...]] = {
    Operation.EDIT: (Operation.IMG2IMG,),
    Operation.VARIATION: (Operation.IMG2IMG, Operation.EDIT),
    Operation.IMG2IMG: (Operation.EDIT,),
}

_OPERATION_INTENT: Mapping[Operation, Intent] = {op: intent for intent, op in INTENT_OPERATIONS.items()}

#: what an operation does, for "can't …" sentences
_CANT: Mapping[Operation, str] = {
    Operation.GENERATE: "generate new images",
    Operation.EDIT: "edit images from an instruction",
    Operation.INPAINT: "repaint a masked area (inpainting)",
    Operation.VARIATION: "make variations",
    Operation.IMG2IMG: "redraw from a starting image (image-to-image)",
}
#: the same as a noun, for "I'll use … instead"
_NOUN: Mapping[Operation, str] = {
    Operation.EDIT: "an instruction edit",
    Operation.IMG2IMG: "image-to-image from the source",
}

#: Default strength when an edit or variation runs as image-to-image.
FALLBACK_STRENGTH = 0.55


def describe_capabilities(context: PlannerContext) -> str:
    """One sentence naming what the backend can do, for help and "can't do that" replies."""
    can = [_CANT[op] for op in _CANT if op in context.capabilities]
    can.append("upscale and transform images (crop, rotate, flip, black and white, …)")
    return "It can " + ", ".join(can[:-1]) + (" and " if len(can) > 1 else "") + can[-1] + "."


def enforce_capabilities(plan: Plan, context: PlannerContext) -> Plan:
    """Make a plan runnable on the active backend, or turn it into an honest explanation.

    Shared by every planner so an LLM cannot talk the orchestrator into an operation the
    backend lacks: a missing operation falls back (see FALLBACKS) with a note in `reply`, or
    becomes a CLARIFY plan whose reply says what the backend can do instead.
    """
    op = plan.operation
    if plan.is_reply_only or op is None or context.can(op):
        return plan
    for alternative in FALLBACKS.get(op, ()):
        if context.can(alternative):
            note = f"This backend can't {_CANT[op]}, so I'm using {_NOUN[alternative]} instead."
            strength = plan.strength
            if alternative is Operation.IMG2IMG and strength is None:
                strength = FALLBACK_STRENGTH
            intent = plan.intent if plan.intent is Intent.REGENERATE else _OPERATION_INTENT[alternative]
            return replace(
                plan,
                intent=intent,
                operation=alternative,
                # strength only means something to image-to-image
                strength=strength if alternative is Operation.IMG2IMG else None,
                reply=_join(note, plan.reply),
            )
    reply = f"The current image backend can't {_CANT[op]}. {describe_capabilities(context)}"
    if op is not Operation.GENERATE and context.can(Operation.GENERATE):
        reply += " You can describe the whole picture you want and I'll generate it fresh."
    return Plan(intent=Intent.CLARIFY, instruction=plan.instruction, reply=reply)


def cap_n(requested: int, context: PlannerContext) -> tuple[int, str | None]:
    """Clamp a batch size to 1..max_n; the note tells the user when their number was cut."""
    if requested > context.max_n:
        return context.max_n, (
            f"You asked for {requested} images; I make at most {context.max_n} at a time, "
            f"so here are {context.max_n}."
        )
    if requested < 1:  # "0 images of a fox": the fewest a request makes, said, not silently
        return 1, f"You asked for {requested} images; a request makes at least 1, so here is 1."
    return requested, None


def _join(*parts: str | None) -> str | None:
    text = " ".join(p for p in parts if p)
    return text or None


@runtime_checkable
class Planner(Protocol):
    """Anything that turns one message into a Plan: the offline rules or the LLM agent."""

    def plan(self, text: str, context: PlannerContext) -> Plan: ...
