"""The tools the LLM agent may call, and how each call becomes a `Plan`.

Every tool is a thin wrapper: validate the model's arguments (pydantic), look the image
numbers up in the `PlannerContext` (never guess), build the same `Plan` the offline planner
would build, and pass it through `enforce_capabilities`. Nothing here touches the database
or a backend; `assistant.agent` hands the plan to `Assistant.execute`, the one code path that
carries out plans for every planner.

A problem with a call (bad arguments, an unknown image number, an unknown tool) raises
`ToolCallError` whose message is written for a person: the agent sends it back to the model
as the tool result, and the single-shot `plan()` turns it into a CLARIFY reply. `ForTheUser`
marks the problems whose right next step is a question or an explanation to the user (which
image? which shape?), not a fix by the model: the turn then ends as an ordinary reply.

The model's reading of the message is checked against Atelier's own rules where they are
certain, so a model cannot quietly do something else than the user asked:

* image numbers: where the user's words name images explicitly ("#2", "the second one", "my
  upload"), `assistant.references.resolve_references` decides which images they mean, exactly
  as for the offline planner. A call on another image follows the user's number (with a note)
  when the call's arguments do not depend on the image (transforms, variations, re-rolls,
  questions), and otherwise goes back to the model to be made again on the right image; where
  the user's reference is ambiguous or names nothing, the call becomes the resolver's question.
* "use my prompt exactly": where the offline rules find a verbatim request in the message, the
  prompt is the user's words whatever the model wrote (and the reply says so); the "use my
  prompt exactly" setting lets the model only cut command words out of the message, never add.
* a request for help is answered in words, never drawn.

There is deliberately no destructive tool: nothing the model says can delete anything.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, ClassVar, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from assistant.offline_planner import (
    DELETE_REPLY,
    HAND_TUNED_NOTE,
    VERBATIM_WHICH_PROMPT,
    OfflinePlanner,
    describe_reply,
)
from assistant.plan import (
    ImageInfo,
    Intent,
    Plan,
    PlannerContext,
    cap_n,
    enforce_capabilities,
)
from assistant.references import NO_IMAGES_QUESTION, ReferenceResult, list_images, resolve_references
from assistant.rewrite import STYLE_PRESETS, build_negative, normalize_style
from assistant.settings import MIN_SIDE
from assistant.transform_phrases import unchanged_by
from tools.base import Operation

#: Longest prompt a tool accepts; longer text is a model running away, not a prompt.
MAX_PROMPT_CHARS = 4000
DEFAULT_VARIATION_STRENGTH = 0.5
DEFAULT_REDRAW_STRENGTH = 0.6
#: Operations whose result has no seed of its own to re-roll.
_NOT_REGENERABLE = frozenset({"upload", "upscale", "transform"})


class ToolCallError(Exception):
    """A tool call that cannot run; the message is shown to the model (and maybe the user)."""


class ForTheUser(ToolCallError):
    """A call that cannot run where the next step is to ask or tell the user, not a fault.

    `intent` labels the answer (a question, help, a refusal); `reply` is what `plan()` shows
    the user when it differs from the message for the model; `quiet` keeps the message out of
    the notes under the model's closing answer (the model words it; the note would repeat it).
    """

    def __init__(
        self, message: str, *, intent: Intent = Intent.CLARIFY, reply: str | None = None, quiet: bool = False
    ) -> None:
        super().__init__(message)
        self.intent = intent
        self.reply = reply or message
        self.quiet = quiet


class UnknownImage(ForTheUser):
    """The call names an image this conversation lacks: a question for the user, not a fault."""


class WrongImage(ForTheUser):
    """The call is on another image than the one the user's words name."""


class NoDeleting(ToolCallError):
    """A call of a delete-like tool, which does not exist; `plan()` answers it as a refusal."""


@dataclass(frozen=True)
class Limits:
    """The settings a tool call is checked against before anything runs."""

    max_side: int = 2048
    max_pixels_per_turn: int = 4096 * 4096


# --------------------------------------------------------------------------------------------
# argument models: the JSON schemas the model sees, and the validation of what it sends


def _style_names() -> str:
    return ", ".join(STYLE_PRESETS)


class _Args(BaseModel):
    """Shared config: unknown keys are ignored (small models add chatter), strings trimmed."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)
    tool_name: ClassVar[str] = ""

    @field_validator("style", mode="before", check_fields=False)
    @classmethod
    def _known_style(cls, value: Any) -> str | None:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        style = normalize_style(str(value))
        if style is None:
            raise ValueError(f"unknown style {value!r}; use one of: {_style_names()}")
        return style


_NUMBER = Field(ge=1, description="The image's number in this conversation (#2 → 2), from the image list.")
_N = Field(1, ge=1, le=1000, description="How many images to make (default 1).")
_SEED = Field(None, ge=0, le=2**63, description="Only when the user asks for a specific seed.")
_NEGATIVE = Field(
    "",
    max_length=MAX_PROMPT_CHARS,
    description="What to keep out of the image; only for backends that take a negative prompt.",
)
_STYLE = Field(None, description=f"Optional style preset: {_style_names()}.")
_UPLOAD = Field(False, description="True to work on the image the user attached to this message.")


class GenerateImage(_Args):
    """Create new image(s) from a text prompt. Use for anything that is not a change to an existing image."""

    model_config = ConfigDict(title="generate_image")
    tool_name: ClassVar[str] = "generate_image"
    prompt: str = Field(
        min_length=1,
        max_length=MAX_PROMPT_CHARS,
        description="The full prompt: the user's subject first, then setting, composition, lighting, "
        "medium/style and detail.",
    )
    negative_prompt: str = _NEGATIVE
    size: str | None = Field(
        None, description="WIDTHxHEIGHT in pixels (e.g. 1024x768); omit for the default."
    )
    n: int = _N
    seed: int | None = _SEED
    style: str | None = _STYLE
    verbatim: bool = Field(
        False,
        description="True when the user asks to use their prompt exactly: then `prompt` is their words, "
        "copied unchanged.",
    )


class EditImage(_Args):
    """Change an existing image as the user asks (keeps everything else)."""

    model_config = ConfigDict(title="edit_image")
    tool_name: ClassVar[str] = "edit_image"
    image_number: int = _NUMBER
    instruction: str = Field(
        "",
        max_length=MAX_PROMPT_CHARS,
        description="The requested change in a few words (kept with the tool call; the image records "
        "the user's own message).",
    )
    prompt: str = Field(
        min_length=1,
        max_length=MAX_PROMPT_CHARS,
        description="The parent image's full prompt with only the requested change applied.",
    )
    negative_prompt: str | None = Field(
        None, max_length=MAX_PROMPT_CHARS, description="Omit to keep the parent's negative prompt."
    )
    style: str | None = _STYLE
    n: int = _N
    seed: int | None = _SEED


class InpaintImage(_Args):
    """Repaint the masked (white) area of an image; only when a mask is attached to this message."""

    model_config = ConfigDict(title="inpaint_image")
    tool_name: ClassVar[str] = "inpaint_image"
    image_number: int | None = Field(None, ge=1, description="The image to paint into; omit for the upload.")
    use_upload: bool = _UPLOAD
    prompt: str = Field(
        min_length=1, max_length=MAX_PROMPT_CHARS, description="The image's prompt with the new content."
    )
    negative_prompt: str | None = Field(None, max_length=MAX_PROMPT_CHARS)
    seed: int | None = _SEED


class VaryImage(_Args):
    """Make variations of an image: same prompt, new seeds."""

    model_config = ConfigDict(title="vary_image")
    tool_name: ClassVar[str] = "vary_image"
    image_number: int = _NUMBER
    prompt: str | None = Field(
        None,
        max_length=MAX_PROMPT_CHARS,
        description="Omit to keep the image's prompt; for 'variations with a moon', its full prompt "
        "with that change.",
    )
    n: int = _N
    strength: float = Field(
        DEFAULT_VARIATION_STRENGTH,
        ge=0.05,
        le=0.95,
        description="How far to move from the source: 0.35 subtle, 0.5 normal, 0.75 strong.",
    )
    seed: int | None = _SEED


class RedrawImage(_Args):
    """Image-to-image: redraw an image (or the upload) as something new, keeping its layout."""

    model_config = ConfigDict(title="redraw_image")
    tool_name: ClassVar[str] = "redraw_image"
    image_number: int | None = Field(None, ge=1, description="The starting image; omit for the upload.")
    use_upload: bool = _UPLOAD
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS, description="What the result should show.")
    negative_prompt: str = _NEGATIVE
    strength: float = Field(
        DEFAULT_REDRAW_STRENGTH, ge=0.05, le=0.95, description="How far to move from the source (0..1)."
    )
    style: str | None = _STYLE
    n: int = _N
    seed: int | None = _SEED


def _transform_names() -> list[Any]:
    from tools.transforms import TRANSFORMS

    return list(TRANSFORMS)


class TransformImage(_Args):
    """Model-free pixel operations: upscale (factor 2 or 4), grayscale, sepia, blur, sharpen, rotate
    (degrees, positive = left), flip (direction), crop (aspect like "16:9"), resize (width, height),
    brightness/contrast/saturation (factor), border (width, color)."""

    model_config = ConfigDict(title="transform_image")
    tool_name: ClassVar[str] = "transform_image"
    image_number: int | None = Field(None, ge=1, description="The image to transform.")
    image_numbers: list[int] | None = Field(
        None, description="Several images to transform the same way (instead of image_number)."
    )
    operation: str = Field(json_schema_extra={"enum": _transform_names()})
    args: dict[str, Any] = Field(default_factory=dict, description='e.g. {"factor": 4} or {"aspect": "1:1"}.')


class RegenerateImage(_Args):
    """Run the request that made an image again with a new seed (or the given one)."""

    model_config = ConfigDict(title="regenerate_image")
    tool_name: ClassVar[str] = "regenerate_image"
    image_number: int = _NUMBER
    n: int = _N
    seed: int | None = _SEED


class DescribeImage(_Args):
    """Look up what is recorded about an image: its prompt, its parameters (seed, size) or its lineage.

    Also for questions about what an image shows ("is there a dog in #2?", "what colour is the
    cabin?"): with about="prompt" the answer quotes what its prompt says of that thing."""

    model_config = ConfigDict(title="describe_image")
    tool_name: ClassVar[str] = "describe_image"
    image_number: int = _NUMBER
    about: Literal["prompt", "params", "lineage"] = "prompt"


class DescribeLineage(_Args):
    """How an image came about: the chain of images and edits that led to it."""

    model_config = ConfigDict(title="describe_lineage")
    tool_name: ClassVar[str] = "describe_lineage"
    image_number: int = _NUMBER


class ListImages(_Args):
    """List this conversation's images with their numbers and what made them."""

    model_config = ConfigDict(title="list_images")
    tool_name: ClassVar[str] = "list_images"


# --------------------------------------------------------------------------------------------
# shared checks


def _image(context: PlannerContext, number: int) -> ImageInfo:
    info = context.image(number)
    if info is None:
        if not context.images:
            raise UnknownImage(f"There is no image #{number}. {NO_IMAGES_QUESTION}")
        raise UnknownImage(
            f"There is no image #{number} in this conversation; it has {list_images(context.images)}. "
            "Which one do you mean?"
        )
    return info


def _upload_number(context: PlannerContext) -> int | None:
    last = context.last
    if context.has_upload and last is not None and last.operation == "upload":
        return last.number
    return None


def _source(context: PlannerContext, number: int | None, use_upload: bool) -> tuple[ImageInfo, bool]:
    """The image a call works on and whether it is this message's upload."""
    upload = _upload_number(context)
    if use_upload or number is None:
        if upload is None:
            if use_upload:
                raise ToolCallError("No image is attached to this message; give an image_number instead.")
            raise ToolCallError("image_number is required (no image is attached to this message).")
        number = upload
    info = _image(context, number)
    return info, upload is not None and info.number == upload


def _with_style(prompt: str, style: str | None) -> str:
    """The preset's terms appended once, so a style means the same words for every planner."""
    preset = STYLE_PRESETS.get(style or "")
    if preset is None:
        return prompt
    lowered = prompt.lower()
    extra = [term for term in preset.positive if term.lower() not in lowered]
    return ", ".join([prompt, *extra]) if prompt else ", ".join(extra)


def _negative(given: str | None, style: str | None, prompt: str, base: str, context: PlannerContext) -> str:
    """The model's negative prompt (or `base`), plus the style's terms; empty for backends without one."""
    if not context.backend_takes_negative_prompt:
        return ""
    text = given if given else base
    if not text:
        return build_negative(style, prompt)
    preset = STYLE_PRESETS.get(style or "")
    terms = [t.strip() for t in text.split(",") if t.strip()]
    lowered = {t.lower() for t in terms}
    terms += [t for t in (preset.negative if preset else ()) if t.lower() not in lowered]
    return ", ".join(terms)


def _size(value: str | None, n: int, limits: Limits) -> tuple[int, int] | None:
    if value is None or not value.strip():
        return None
    m = re.fullmatch(r"\s*(\d{1,5})\s*[x×X*]\s*(\d{1,5})\s*", value)
    if m is None:
        raise ToolCallError(f"size must look like 1024x768, not {value!r}.")
    width, height = int(m.group(1)), int(m.group(2))
    if min(width, height) < MIN_SIDE or max(width, height) > limits.max_side:
        raise ToolCallError(
            f"size {width}x{height} is out of range: each side must be {MIN_SIDE}..{limits.max_side} px."
        )
    if width * height * n > limits.max_pixels_per_turn:
        raise ToolCallError(
            f"{n} × {width}x{height} is more pixels than one turn may make; use fewer or smaller."
        )
    return width, height


def _is_users_words(prompt: str, text: str) -> bool:
    return bool(prompt) and prompt in text


def _join(*parts: str | None) -> str | None:
    text = " ".join(p for p in parts if p)
    return text or None


# --------------------------------------------------------------------------------------------
# calls → plans


@dataclass(frozen=True)
class Call:
    """What a builder needs besides the arguments: the user's words, the context, any preface."""

    text: str
    context: PlannerContext
    limits: Limits
    #: text the model wrote next to its tool call ("I'll ignore that part…"), shown to the user
    preface: str | None = None
    #: numbers of the images earlier calls of this turn made ("draw a fox, then upscale it")
    new_images: tuple[int, ...] = field(default=())

    @cached_property
    def reading(self) -> Plan:
        """The offline rules' reading of the message, without the "use my prompt exactly" setting.

        Used only where those rules are certain: a verbatim request and its prompt, the bare
        "use my prompt exactly" command, a request for help. Never for what to draw.
        """
        return _offline_reading(self.text, replace(self.context, verbatim=False))

    @cached_property
    def references(self) -> ReferenceResult:
        """Which images the user's words name, by the same rules as the offline planner."""
        return resolve_references(self.text, self.context.images, focus=self.context.focus)

    @property
    def verbatim_request(self) -> str | None:
        """The prompt the message asks to be used word for word, or None."""
        reading = self.reading
        if reading.verbatim and reading.prompt and reading.intent in (Intent.GENERATE, Intent.IMG2IMG):
            return reading.prompt
        return None

    def setting_words(self, prompt: str) -> tuple[str, bool]:
        """With the "use my prompt exactly" setting: (the prompt to use, whether `prompt` was replaced).

        The model may cut command words ("draw", "seed 42") out of the message, which leaves the
        user's words as they are; anything else is a rewrite, and the message's own words (as the
        offline rules read them with the setting on) are used instead.
        """
        if _is_users_words(prompt, self.text):
            return prompt, False
        reading = _offline_reading(self.text, self.context)
        if reading.verbatim and reading.prompt and reading.intent in (Intent.GENERATE, Intent.IMG2IMG):
            return reading.prompt, True
        return self.text.strip(), True


def _offline_reading(text: str, context: PlannerContext) -> Plan:
    try:
        return OfflinePlanner().plan(text, context)
    except Exception:  # the rules are a check here, never a reason to lose the call
        return Plan(intent=Intent.CLARIFY, instruction=text)


VERBATIM_NOTE = "You asked for your prompt exactly, so it went to the image model word for word."
VERBATIM_SETTING_NOTE = "“Use my prompt exactly” is on, so your words went to the image model unchanged."


def _exact_prompt(prompt: str, call: Call, *, model_verbatim: bool = False) -> tuple[str, str | None] | None:
    """(prompt, note) when the user's exact words must be the prompt; None when rewriting is fine.

    The message's own verbatim request wins over whatever the model wrote; then the setting;
    then the model's own `verbatim=true`, which must copy the user's words.
    """
    asked = call.verbatim_request
    if asked is not None:
        # a prompt in weights and tags is kept as typed, as if the user had asked for that
        why = (
            HAND_TUNED_NOTE if call.reading.reply and HAND_TUNED_NOTE in call.reading.reply else VERBATIM_NOTE
        )
        return asked, None if prompt == asked else why
    if call.context.verbatim:
        words, replaced = call.setting_words(prompt)
        return words, VERBATIM_SETTING_NOTE if replaced else None
    if model_verbatim:
        if not _is_users_words(prompt, call.text):
            raise ToolCallError(
                "verbatim=true needs the user's own words copied exactly as the prompt; "
                f"{prompt!r} is not in their message."
            )
        return prompt, None
    return None


def _no_prompt_given(call: Call) -> None:
    """ "Use my prompt exactly" with no prompt: ask for it, never draw those words."""
    if call.reading.intent is Intent.CLARIFY and call.reading.reply == VERBATIM_WHICH_PROMPT:
        raise ForTheUser(
            "The message asks to use a prompt exactly but gives none. " + VERBATIM_WHICH_PROMPT,
            reply=VERBATIM_WHICH_PROMPT,
        )


class _Prompt(NamedTuple):
    text: str
    negative: str
    style: str | None
    verbatim: bool
    #: why the user's words replaced the model's (shown to the user), if they did
    note: str | None


def _prompt_for(
    prompt: str, negative_prompt: str | None, style: str | None, call: Call, model_verbatim: bool = False
) -> _Prompt:
    """The prompt a drawing call runs with.

    The user's exact words, when they asked for them, win over the model's rewrite and drop
    the style and negative prompt; otherwise the style preset is applied.
    """
    exact = _exact_prompt(prompt, call, model_verbatim=model_verbatim)
    if exact is not None:
        words, note = exact
        return _Prompt(words, "", None, True, note)
    chosen = style or normalize_style(call.context.style)
    styled = _with_style(prompt, chosen)
    return _Prompt(styled, _negative(negative_prompt, chosen, styled, "", call.context), chosen, False, None)


def _generate(args: GenerateImage, call: Call) -> Plan:
    context = call.context
    _no_prompt_given(call)
    n, note = cap_n(args.n, context)
    size = _size(args.size, n, call.limits)
    prompt, negative, style, verbatim, forced = _prompt_for(
        args.prompt, args.negative_prompt, args.style, call, args.verbatim
    )
    return Plan(
        intent=Intent.GENERATE,
        instruction=call.text,
        prompt=prompt,
        negative_prompt=negative,
        n=n,
        seed=args.seed,
        style=style,
        verbatim=verbatim,
        reply=_join(call.preface, forced, note),
        size=size,
    )


def _edit(args: EditImage, call: Call) -> Plan:
    context = call.context
    parent, is_upload = _source(context, args.image_number, False)
    n, note = cap_n(args.n, context)
    new_style = args.style if args.style != parent.style else None
    style = new_style or parent.style
    prompt = args.prompt if context.verbatim else _with_style(args.prompt, new_style)
    negative = _negative(
        args.negative_prompt, new_style, prompt, "" if new_style else parent.negative_prompt, context
    )
    if prompt == parent.prompt and negative == parent.negative_prompt and args.seed is None:
        # "#2 but keep the fox": a call that would redraw #2 unchanged; ask what to change
        raise ForTheUser(
            f"That edit would not change #{parent.number}: its prompt is the same as #{parent.number}'s. "
            f"What should I change in #{parent.number}?"
        )
    return Plan(
        intent=Intent.EDIT,
        targets=(parent.number,),
        instruction=call.text,
        prompt=prompt,
        negative_prompt=negative,
        n=n,
        seed=args.seed,
        style=style,
        verbatim=context.verbatim,
        reply=_join(call.preface, note),
        use_upload=is_upload,
    )


def _inpaint(args: InpaintImage, call: Call) -> Plan:
    context = call.context
    if not context.has_mask:
        raise ToolCallError(
            "inpaint_image needs a mask attached to this message (white where the image should change); "
            "use edit_image to change a whole image."
        )
    source, is_upload = _source(context, args.image_number, args.use_upload)
    return Plan(
        intent=Intent.INPAINT,
        targets=(source.number,),
        instruction=call.text,
        prompt=args.prompt,
        negative_prompt=_negative(args.negative_prompt, None, args.prompt, source.negative_prompt, context),
        seed=args.seed,
        style=source.style,
        verbatim=context.verbatim,
        reply=call.preface,
        use_upload=is_upload,
    )


def _vary(args: VaryImage, call: Call) -> Plan:
    context = call.context
    target = _image(context, args.image_number)
    n, note = cap_n(args.n, context)
    return Plan(
        intent=Intent.VARIATION,
        targets=(target.number,),
        instruction=call.text,
        prompt=args.prompt or target.prompt,
        negative_prompt=target.negative_prompt if context.backend_takes_negative_prompt else "",
        n=n,
        strength=args.strength,
        new_seed=args.seed is None,
        seed=args.seed,
        style=target.style,
        verbatim=context.verbatim,
        reply=_join(call.preface, note),
        use_upload=target.number == _upload_number(context),
    )


def _redraw(args: RedrawImage, call: Call) -> Plan:
    context = call.context
    _no_prompt_given(call)
    source, is_upload = _source(context, args.image_number, args.use_upload)
    n, note = cap_n(args.n, context)
    prompt, negative, style, verbatim, forced = _prompt_for(
        args.prompt, args.negative_prompt, args.style, call
    )
    return Plan(
        intent=Intent.IMG2IMG,
        targets=(source.number,),
        instruction=call.text,
        prompt=prompt,
        negative_prompt=negative,
        n=n,
        strength=args.strength,
        seed=args.seed,
        style=style,
        verbatim=verbatim,
        reply=_join(call.preface, forced, note),
        use_upload=is_upload,
    )


#: What to ask for when a transform's argument is missing.
_ARGUMENT_HINTS = {
    "crop.aspect": 'a shape: an aspect such as "1:1" (square), "16:9" or "4:3"',
    "rotate.degrees": "an angle: 90 (left), -90 (right) or 180",
    "flip.direction": 'a direction: "horizontal" (mirror) or "vertical" (upside down)',
    "resize.width": "a width in pixels",
    "resize.height": "a height in pixels",
    "brightness.factor": "how much: a factor such as 1.3 (brighter) or 0.7 (darker)",
    "contrast.factor": "how much: a factor such as 1.3 (more) or 0.7 (less)",
    "saturation.factor": "how much: a factor such as 1.5 (more colourful) or 0.5 (less)",
}


def _check_transform(name: str, args: Mapping[str, Any]) -> None:
    """The transform's own signature decides which arguments are allowed or missing."""
    from tools.transforms import TRANSFORMS

    if name not in TRANSFORMS:
        raise ToolCallError(f"Unknown operation {name!r}; available: {', '.join(TRANSFORMS)}.")
    parameters = list(inspect.signature(TRANSFORMS[name]).parameters.values())[1:]
    known = [p.name for p in parameters]
    unknown = sorted(set(args) - set(known))
    if unknown:
        raise ToolCallError(
            f"{name} does not take {', '.join(unknown)}; it takes: {', '.join(known) or 'nothing'}."
        )
    missing = [p.name for p in parameters if p.default is inspect.Parameter.empty and p.name not in args]
    if name == "crop" and not args.get("aspect") and not args.get("box"):
        missing = ["aspect"]
    if missing:
        # "crop it", "rotate it": only the user knows which shape or way; ask rather than guess
        wanted = "; ".join(_ARGUMENT_HINTS.get(f"{name}.{m}", m) for m in missing)
        raise ForTheUser(f"{name} needs {wanted}. Which should it be?")
    if name == "upscale" and args.get("factor", 2) not in (2, 4):
        raise ToolCallError(f"upscale factor must be 2 or 4, not {args.get('factor')!r}.")


def _transform(args: TransformImage, call: Call) -> Plan:
    context = call.context
    numbers = list(args.image_numbers or ())
    if args.image_number is not None:
        numbers.insert(0, args.image_number)
    if not numbers:
        upload = _upload_number(context)
        if upload is None:
            raise ToolCallError("image_number is required.")
        numbers = [upload]
    targets = tuple(dict.fromkeys(_image(context, number).number for number in numbers))
    name = args.operation.strip().lower()
    transform_args = dict(args.args)
    _check_transform(name, transform_args)
    same = [
        info
        for n in targets
        if (info := context.image(n)) is not None and unchanged_by(info, name, transform_args)
    ]
    if same and len(same) == len(targets):  # a copy of itself is not a new image
        sizes = ", ".join(f"#{i.number} is already {i.width}×{i.height}" for i in same)
        raise ForTheUser(f"{sizes}, so that {name} would change nothing.")
    if name == "upscale":
        transform_args.setdefault("factor", 2)
    return Plan(
        intent=Intent.UPSCALE if name == "upscale" else Intent.TRANSFORM,
        targets=targets,
        instruction=call.text,
        transform=name,
        transform_args=transform_args,
        reply=call.preface,
        use_upload=targets == (_upload_number(context),),
    )


def _regenerate(args: RegenerateImage, call: Call) -> Plan:
    context = call.context
    target = _image(context, args.image_number)
    if target.operation in _NOT_REGENERABLE:
        what = f"{'an' if target.operation[0] in 'aeiou' else 'a'} {target.operation}"
        source = f" of #{target.parent_number}" if target.parent_number is not None else ""
        hint = f" Regenerate #{target.parent_number} to redo that one." if source else ""
        raise ForTheUser(f"#{target.number} is {what}{source}, so there is nothing to re-roll.{hint}")
    n, note = cap_n(args.n, context)
    return Plan(
        intent=Intent.REGENERATE,
        targets=(target.number,),
        instruction=call.text,
        prompt=target.prompt,
        negative_prompt=target.negative_prompt if context.backend_takes_negative_prompt else "",
        n=n,
        new_seed=args.seed is None,
        seed=args.seed,
        style=target.style,
        verbatim=context.verbatim,
        reply=_join(call.preface, note),
        operation=Operation(target.operation),
    )


def _describe(number: int | None, kind: str, call: Call) -> Plan:
    targets = () if number is None else (_image(call.context, number).number,)
    return Plan(
        intent=Intent.DESCRIBE,
        targets=targets,
        instruction=call.text,
        question_kind=kind,
        reply=describe_reply(kind, targets, call.context),
    )


_Builder = Callable[[Any, Call], Plan]

#: name → (argument model, builder). The order is the order the model sees them in.
TOOLS: dict[str, tuple[type[_Args], _Builder]] = {
    "generate_image": (GenerateImage, _generate),
    "edit_image": (EditImage, _edit),
    "inpaint_image": (InpaintImage, _inpaint),
    "vary_image": (VaryImage, _vary),
    "redraw_image": (RedrawImage, _redraw),
    "transform_image": (TransformImage, _transform),
    "regenerate_image": (RegenerateImage, _regenerate),
    "describe_image": (DescribeImage, lambda a, c: _describe(a.image_number, a.about, c)),
    "describe_lineage": (DescribeLineage, lambda a, c: _describe(a.image_number, "lineage", c)),
    "list_images": (ListImages, lambda a, c: _describe(None, "list", c)),
}


def tool_schemas(context: PlannerContext) -> list[dict[str, Any]]:
    """OpenAI function schemas for this turn; inpainting is offered only when a mask is attached."""
    from langchain_core.utils.function_calling import convert_to_openai_tool

    return [
        convert_to_openai_tool(model)
        for name, (model, _) in TOOLS.items()
        if name != "inpaint_image" or context.has_mask
    ]


def _validation_message(name: str, error: ValidationError) -> str:
    parts = []
    for item in error.errors(include_url=False):
        where = ".".join(str(p) for p in item.get("loc", ())) or "arguments"
        message = str(item.get("msg", "invalid"))
        if item.get("type") != "missing" and "input" in item:
            message += f" (got {item['input']!r:.60})"
        parts.append(f"{where}: {message}")
    return f"Invalid arguments for {name}: " + "; ".join(parts) + "."


#: Tools that make or change images (the rest only answer questions).
IMAGE_TOOLS = frozenset(
    {
        "generate_image",
        "edit_image",
        "inpaint_image",
        "vary_image",
        "redraw_image",
        "transform_image",
        "regenerate_image",
    }
)
#: Tools whose result depends only on which image they get, so a wrong number can be swapped
#: for the user's; the others carry a prompt the model wrote from the image it picked.
_SWAPPABLE = frozenset({"transform_image", "regenerate_image", "describe_image", "describe_lineage"})
#: Tools that work on existing images, so their image numbers are checked against the message.
_ON_IMAGES = (IMAGE_TOOLS - {"generate_image"}) | _SWAPPABLE
_DESTRUCTIVE_NAME = re.compile(r"delete|remove|erase|drop|wipe|purge|destroy|trash|clear|reset", re.I)


def plan_for_call(name: str, arguments: Any, call: Call) -> Plan:
    """One tool call → a runnable (or honestly explained) Plan; raises ToolCallError otherwise."""
    entry = TOOLS.get(name)
    if entry is None:
        if _DESTRUCTIVE_NAME.search(name):
            raise NoDeleting(f"Unknown tool {name!r}. There is no delete tool: {DELETE_REPLY}")
        raise ToolCallError(f"Unknown tool {name!r}. Available tools: {', '.join(TOOLS)}.")
    model, build = entry
    if isinstance(arguments, str) or not isinstance(arguments, Mapping):
        raise ToolCallError(f"Invalid arguments for {name}: expected a JSON object, got {arguments!r:.80}.")
    try:
        args = model.model_validate(dict(arguments))
    except ValidationError as error:
        raise ToolCallError(_validation_message(name, error)) from None
    if name in IMAGE_TOOLS and call.reading.intent is Intent.HELP:
        raise ForTheUser(
            "This message asks what Atelier can do, not for a picture, so nothing was made: answer it in "
            f"words. What Atelier can do: {call.reading.reply}",
            intent=Intent.HELP,
            reply=call.reading.reply,
            quiet=True,
        )
    args, note = _follow_the_users_images(name, args, call)
    plan = build(args, call)
    if note:
        plan = replace(plan, reply=_join(note, plan.reply))
    return enforce_capabilities(plan, call.context)


def _numbers_text(numbers: Sequence[int]) -> str:
    names = [f"#{n}" for n in numbers]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _call_targets(name: str, args: _Args, context: PlannerContext) -> list[int]:
    """The image numbers a call works on (the upload when it names none)."""
    numbers: list[int] = []
    if isinstance(args, TransformImage) and args.image_numbers:
        numbers += args.image_numbers
    number = getattr(args, "image_number", None)
    if number is not None:
        numbers.insert(0, number)
    if not numbers and name in ("inpaint_image", "redraw_image", "transform_image"):
        upload = _upload_number(context)
        if upload is not None:
            numbers.append(upload)
    return list(dict.fromkeys(numbers))


def _follow_the_users_images(name: str, args: _Args, call: Call) -> tuple[_Args, str | None]:
    """Check the call's images against the images the user's words name (see the module docstring).

    Returns the arguments to use (the user's image swapped in where that is safe) and a note
    for the reply; raises `ForTheUser` where the call must be redone or the user asked.
    """
    if name not in _ON_IMAGES:  # generate_image and list_images work on no image
        return args, None
    refs = call.references
    if not refs.explicit:  # nothing named, or only "it" / "this": the model's pick stands
        return args, None
    targets = _call_targets(name, args, call.context)
    picked = [n for n in targets if n not in call.new_images]  # this turn's results are always fine
    if targets and not picked:
        return args, None
    if any(call.context.image(n) is None for n in picked):
        return args, None  # a number that exists nowhere: the builder says so and lists the real ones
    said = ", ".join(f"“{m.text}”" for m in refs.mentions)
    if not refs.ok:  # ambiguous, or names nothing that exists: Atelier asks, it never guesses
        raise ForTheUser(refs.question or NO_IMAGES_QUESTION)
    wanted = list(refs.numbers)
    if name in IMAGE_TOOLS and not re.search(r"[^\W_]", refs.remainder):
        # "#2", "the original photo": which image is clear, what to do with it is not
        raise ForTheUser(
            f"The message names {_numbers_text(wanted)} ({said}) but does not say what to do with it. "
            f"What would you like me to do with {_numbers_text(wanted)}? For example: change something "
            "(“… but at sunset”), make variations, upscale it, or ask what prompt made it."
        )
    if all(n in wanted for n in picked):
        return args, None
    where = _numbers_text(picked) if picked else "no image"
    swappable = name in _SWAPPABLE or (name == "vary_image" and getattr(args, "prompt", None) is None)
    if swappable and (len(wanted) == 1 or name == "transform_image"):
        if isinstance(args, TransformImage):
            swapped: _Args = args.model_copy(update={"image_number": None, "image_numbers": wanted})
        else:
            swapped = args.model_copy(update={"image_number": wanted[0]})
        note = f"You named {_numbers_text(wanted)}, so I used {_numbers_text(wanted)} (not {where})."
        return swapped, note
    first = call.context.image(wanted[0])
    hint = f" #{first.number}'s prompt: “{first.prompt[:MAX_HINT_PROMPT]}”." if first and first.prompt else ""
    raise WrongImage(
        f"The message names {_numbers_text(wanted)} ({said}), but this {name} call is on {where}. "
        f"Call {name} again on {_numbers_text(wanted)}, starting from that image's own prompt.{hint}"
    )


#: How much of the named image's prompt goes into a "call it again on #2" message.
MAX_HINT_PROMPT = 300


# --------------------------------------------------------------------------------------------
# answers from the context alone (for `plan()`, which has no database)


def with_preface(plan: Plan, text: str | None) -> Plan:
    """Put a line in front of what the user will read (used for the fallback note)."""
    if not text:
        return plan
    return replace(plan, reply=_join(text, plan.reply))
