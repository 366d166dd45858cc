"""`Assistant`: one turn from user text to stored images, as a stream of events.

The order is fixed: store the user message, plan, run the tool, store images + lineage +
reply atomically. Planners decide, tools render, storage records; this module is the only
one that talks to all three, and the only place exceptions become user messages.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import re
import secrets
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

from PIL import Image as PILImage

from assistant.content_question import asked_content, describe_content, describe_which
from assistant.describe import asked_fields, describe_fields, describe_lineage, describe_list, describe_prompt
from assistant.events import Event, Failed, ImageReady, PlanMade, Progress, Reply
from assistant.one_line import one_line
from assistant.pasted_parameters import plan_from_pasted_parameters
from assistant.plan import ImageInfo, Intent, Plan, Planner, PlannerContext
from assistant.references import asks_which_image
from assistant.settings import BACKEND_MAX_STEPS, MAX_GUIDANCE, MAX_SEED, MIN_SIDE, Settings
from assistant.upload_parameters import EMBEDDED_NAMES, embedded_parameters, number_or_none
from storage.db import StorageError
from storage.models import Image
from storage.repository import ImageFileDamaged, NewGeneration, NewImage, NotFound, Repository
from tools.base import (
    Cancelled,
    CancelToken,
    ImageBackend,
    ImageRequest,
    ImageResult,
    InvalidRequest,
    Operation,
    ToolError,
)

log = logging.getLogger(__name__)

BACKEND_DEFAULT_SIZES: dict[str, tuple[int, int]] = {"openai": (1024, 1024), "offline": (512, 512)}

#: how far back a "go back to #N" reply is looked for (replies since then keep it the working image)
FOCUS_LOOKBACK_MESSAGES = 40

#: how many ancestors an edit looks through for the steps and guidance it inherits
INHERIT_LOOKBACK_IMAGES = 20

#: Backends that ignore negative prompts: the planner leaves them empty instead of pretending.
BACKENDS_WITHOUT_NEGATIVE_PROMPT = frozenset({"openai", "offline"})
#: backends whose sampler (scheduler) a message can choose ("use euler a")
BACKENDS_WITH_SAMPLERS = frozenset({"diffusers"})

#: the reply of a turn whose renderer stopped reading it (the UI runs turns in lanes that do
#: not: see `assistant.turn_lanes`; a program driving `respond` itself may)
INTERRUPTED = (
    "Interrupted before it finished (what was running it stopped), so no image was made. "
    "Say “try again” to run it again."
)
#: the record of a backend call stopped after some of its images were made (they are kept)
STOPPED_PART_WAY = "Stopped by the user; the images finished before the stop are kept."
#: the setting that picks each backend's model, for "set it back to replay this"
_MODEL_SETTINGS = {"diffusers": "ATELIER_DIFFUSERS_MODEL", "openai": "ATELIER_OPENAI_IMAGE_MODEL"}
#: what a user types to re-run a turn that failed or was stopped
RETRY = re.compile(
    r"(?:please\s+|ok(?:ay)?,?\s+)?(?:try\s+(?:it\s+|that\s+)?again|retry|redo|do\s+it\s+again)"
    r"(?:\s+please)?[.!]*",
    re.IGNORECASE,
)
#: steps a replay re-runs with Pillow alone: no backend, no seed
MODEL_FREE_OPERATIONS = {"transform", "upscale"}
BACKEND_OPERATIONS_NEEDING_SOURCE = {
    Operation.EDIT,
    Operation.INPAINT,
    Operation.VARIATION,
    Operation.IMG2IMG,
}


@dataclass(frozen=True)
class Attachment:
    """An uploaded file: `kind` is "image" (a source) or "mask" (white = repaint)."""

    data: bytes
    kind: str = "image"
    filename: str = "upload"


@dataclass
class TurnState:
    """What a turn has gathered so far; becomes one atomic `record_turn`."""

    conversation_id: int
    plan: Plan
    generations: list[NewGeneration] = field(default_factory=list)
    images: list[NewImage] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: the backend call that was running when the renderer went away, recorded as cancelled
    interrupted: NewGeneration | None = None
    #: every call's result had exactly its source's pixels: the reply must not say "Edited"
    unchanged: bool = False


@dataclass
class TurnUsage:
    """What one user turn has asked the backends for so far, across all its calls.

    The LLM agent may make several tool calls in one turn, and a plan may fan out over several
    sources; the per-turn caps (pixels, cost) hold for their sum, not for each call alone.
    """

    pixels: int = 0
    #: cost estimates of calls made this turn that are not in the database yet
    pending_usd: float = 0.0


@runtime_checkable
class TurnRunner(Protocol):
    """A planner that drives the whole turn itself (the LLM agent's tool-calling loop).

    It must carry out every image operation through `Assistant.execute`, so there is one
    code path for offline rules and LLM tool calls alike.
    """

    def run_turn(
        self,
        assistant: Assistant,
        conversation_id: int,
        text: str,
        context: PlannerContext,
        upload: Image | None,
        mask: PILImage.Image | None,
        notes: list[str],
    ) -> Iterator[Event]: ...


class TurnFailed(Exception):
    def __init__(
        self, message: str, generation: NewGeneration | None = None, *, cancelled: bool = False
    ) -> None:
        super().__init__(message)
        self.message = message
        self.generation = generation
        self._cancelled = cancelled

    @property
    def cancelled(self) -> bool:
        return self._cancelled or (self.generation is not None and self.generation.status == "cancelled")


class Assistant:
    def __init__(
        self,
        settings: Settings,
        repo: Repository,
        backend: ImageBackend | None = None,
        planner: Planner | None = None,
        planner_name: str | None = None,
    ) -> None:
        self.settings = settings
        self.repo = repo
        self._backend = backend
        self._planner = planner
        self.planner_name = planner_name or ("custom" if planner is not None else "offline")
        self.cancel_token = CancelToken()
        self.turn_usage = TurnUsage()

    # ----- collaborators, built lazily so the app starts fast ------------------------

    @property
    def backend(self) -> ImageBackend:
        if self._backend is None:
            from assistant.backends import make_backend

            self._backend = make_backend(self.settings)
        return self._backend

    @property
    def planner(self) -> Planner:
        if self._planner is None:
            from assistant.planners import make_planner

            self._planner, self.planner_name = make_planner(self.settings, self)
        return self._planner

    # ----- the turn ------------------------------------------------------------------

    def respond(
        self, conversation_id: int | None, text: str, attachments: Sequence[Attachment] = ()
    ) -> Iterator[Event]:
        """Run one turn; yields PlanMade, Progress*, ImageReady*, then Reply or Failed."""
        self.cancel_token = CancelToken()
        self.turn_usage = TurnUsage()
        text = clean_text(text or "")
        if not _has_visible_text(text) and not attachments:
            yield Failed(conversation_id or 0, "Please type what you'd like to create or change.")
            return
        notes: list[str] = []
        limit = self.settings.max_message_chars
        if len(text) > limit:
            text = text[:limit]
            notes.append(f"Your message was longer than {limit:,} characters; I used the first {limit:,}.")
        try:
            if conversation_id is None:
                conversation_id = self.repo.create_conversation(_title_from(text)).id
            else:
                self.repo.get_conversation(conversation_id)
            user_message = self.repo.add_message(conversation_id, "user", text)
        except StorageError as exc:
            yield Failed(conversation_id or 0, str(exc))
            return

        try:
            upload, mask = self._take_attachments(conversation_id, user_message.id, text, attachments, notes)
        except TurnFailed as failure:
            yield from self._fail(conversation_id, None, failure)
            return

        retried = self._failed_request(conversation_id, text) if not attachments else None
        if retried is not None:
            notes.append(f"Retrying your earlier request: “{one_line(retried, 120)}”.")
            text = retried

        try:
            context = self.planner_context(
                conversation_id, has_upload=upload is not None, has_mask=mask is not None
            )
        except ToolError as exc:  # e.g. the configured local model folder is missing
            yield from self._fail(conversation_id, None, TurnFailed(exc.user_message))
            return
        pasted = plan_from_pasted_parameters(text) if upload is None and mask is None else None
        if pasted is not None:  # an A1111 block says exactly what to make: no planner rewrites it
            if pasted.negative_prompt and self.backend.name in BACKENDS_WITHOUT_NEGATIVE_PROMPT:
                notes.append(
                    f"The {self.backend.name} backend takes no negative prompt; "
                    f"“{one_line(pasted.negative_prompt, 80)}” was left out."
                )
            yield from self.execute(conversation_id, pasted, notes=notes)
            return
        planner = self.planner
        if isinstance(planner, TurnRunner):  # the LLM agent runs its own tool loop over `execute`
            yield from planner.run_turn(self, conversation_id, text, context, upload, mask, notes)
            return
        try:
            plan = planner.plan(text, context)
        except Exception as exc:  # a planner bug must not lose the turn
            log.exception("planner failed")
            yield from self._fail(
                conversation_id,
                None,
                TurnFailed(f"I could not understand that request ({type(exc).__name__})."),
            )
            return
        yield from self.execute(conversation_id, plan, upload=upload, mask=mask, notes=notes)

    def execute(
        self,
        conversation_id: int,
        plan: Plan,
        *,
        upload: Image | None = None,
        mask: PILImage.Image | None = None,
        notes: Sequence[str] = (),
        tool_calls: Sequence[dict[str, Any]] = (),
        record_reply: bool = True,
    ) -> Iterator[Event]:
        """Carry out a plan: the one code path for every planner, offline or LLM tool call."""
        state = TurnState(conversation_id, plan, notes=list(notes))
        try:
            yield self._plan_event(conversation_id, plan, tool_calls, state.notes)
            if plan.is_reply_only:
                reply = self._with_notes(self._answer(conversation_id, plan), state)
                if record_reply:
                    self.repo.record_turn(conversation_id, reply=reply, plan=plan.to_dict())
            else:
                yield from self._run_plan(state, upload, mask)
                state.notes = self._new_notes(conversation_id, state.notes)
                reply = self._success_reply(state)
                record = self.repo.record_turn(
                    conversation_id,
                    reply=reply if record_reply else None,
                    plan={**plan.to_dict(), "tool_calls": list(tool_calls), "notes": state.notes},
                    generations=state.generations,
                    images=state.images,
                    images_message_id=None,
                )
                self.turn_usage.pending_usd = 0.0  # recorded now, with their real cost
        except TurnFailed as failure:
            if failure.cancelled and any(generation.images for generation in state.generations):
                yield from self._keep_finished(state, failure, tool_calls)
                return
            yield from self._fail(conversation_id, plan, failure, tool_calls)
            return
        except StorageError as exc:
            yield from self._fail(conversation_id, plan, TurnFailed(str(exc)), tool_calls)
            return
        except GeneratorExit:  # the renderer closed the turn (a Streamlit rerun or stop)
            self._record_stopped(conversation_id, plan, state, tool_calls)
            raise
        if plan.is_reply_only:
            yield Reply(conversation_id, reply)
            return
        yield from self._images_ready(conversation_id, record.images)
        yield Reply(conversation_id, reply)

    def _images_ready(self, conversation_id: int, images: Sequence[Image]) -> Iterator[ImageReady]:
        for image in images:
            yield ImageReady(
                conversation_id,
                image.id,
                image.number,
                image.parent_id,
                image.operation,
                str(self.repo.image_path(image)),
            )

    # ----- planning context ------------------------------------------------------------

    def planner_context(self, conversation_id: int, *, has_upload: bool, has_mask: bool) -> PlannerContext:
        rows = self.repo.conversation_images(conversation_id)
        numbers = {row.id: row.number for row in rows}
        infos = tuple(
            ImageInfo(
                number=row.number,
                id=row.id,
                operation=row.operation,
                parent_number=numbers.get(row.parent_id) if row.parent_id is not None else None,
                prompt=row.prompt,
                instruction=row.instruction,
                width=row.width,
                height=row.height,
                seed=row.seed,
                negative_prompt=row.negative_prompt,
                style=(row.params or {}).get("style"),
                message_id=row.message_id,
                rerun_of=numbers.get((row.params or {}).get("regenerated_from", -1)),
            )
            for row in rows
        )
        backend = self.backend
        return PlannerContext(
            images=infos,
            has_upload=has_upload,
            has_mask=has_mask,
            capabilities=backend.capabilities,
            backend_takes_negative_prompt=backend.name not in BACKENDS_WITHOUT_NEGATIVE_PROMPT,
            style=self.settings.style,
            verbatim=self.settings.verbatim,
            default_n=1,
            max_n=self.settings.max_n,
            default_size=self.default_size(),
            focus=self._went_back_to(conversation_id, rows),
            pending_request=self._asked_which_image(conversation_id),
        )

    def _asked_which_image(self, conversation_id: int) -> str | None:
        """The words of the request the last reply asked "which one?" about, if it did."""
        history = self.repo.messages(conversation_id, limit=3)
        if len(history) < 3 or history[-1].role != "user":  # [-1] is the message being planned
            return None
        request, reply = history[-3], history[-2]
        plan = reply.plan or {}
        if request.role != "user" or reply.role != "assistant" or plan.get("intent") != "clarify":
            return None
        return request.content if asks_which_image(str(plan.get("reply") or "")) else None

    def _went_back_to(self, conversation_id: int, rows: Sequence[Image]) -> int | None:
        """The image an "undo" reply went back to, while no image has been made since."""
        newest_image_message = max((row.message_id or 0 for row in rows), default=0)
        for message in reversed(self.repo.messages(conversation_id, limit=FOCUS_LOOKBACK_MESSAGES)):
            if message.id <= newest_image_message:
                return None
            focus = (message.plan or {}).get("focus") if message.role == "assistant" else None
            if isinstance(focus, int) and any(row.number == focus for row in rows):
                return focus
        return None

    # ----- attachments -------------------------------------------------------------------

    def _take_attachments(
        self,
        conversation_id: int,
        message_id: int,
        text: str,
        attachments: Sequence[Attachment],
        notes: list[str],
    ) -> tuple[Image | None, PILImage.Image | None]:
        """Decode uploads; what decoding had to change (first frame of a GIF, 16-bit → 8-bit) goes to `notes`.

        The file name is the user's label only: it is shown (shortened, as a base name) and
        never used as a path, since files are stored under their content hash.
        """
        from tools.image_input import load_image, prepare_mask

        decoded: list[tuple[Attachment, PILImage.Image]] = []
        for attachment in attachments:
            try:
                decoded.append((attachment, load_image(attachment.data, notes=notes)))
            except ToolError as exc:
                raise TurnFailed(_unusable(attachment, exc.user_message)) from None
        masks = [(attachment, image) for attachment, image in decoded if attachment.kind == "mask"]
        mask = masks[-1][1] if masks else None
        upload: Image | None = None
        for attachment, image in decoded:
            if attachment.kind == "mask":
                continue
            if masks:  # checked before the upload is stored: a turn that fails keeps nothing
                try:
                    prepare_mask(masks[-1][1], image.size)
                except ToolError as exc:
                    raise TurnFailed(_unusable(masks[-1][0], exc.user_message)) from None
            image = self._within_side_limit(image, attachment.filename, notes)
            prompt, negative, embedded = embedded_parameters(attachment.data)
            upload = self.repo.save_upload(
                conversation_id,
                message_id,
                image,
                text,
                prompt=prompt,
                negative_prompt=negative,
                params={"embedded": embedded} if embedded else None,
            )
        return upload, mask

    def _within_side_limit(self, image: PILImage.Image, filename: str, notes: list[str]) -> PILImage.Image:
        """A photo larger than ATELIER_MAX_SIDE, scaled down to it: the picture to work on.

        A phone photo is 4032×3024; refusing it (every edit of it would be over the limit) is
        not what anyone sending one expects. The user keeps the original; Atelier stores and
        works on the scaled copy (sides kept to multiples of 8, as models take them) and says so.
        """
        limit = self.settings.max_side
        if max(image.size) <= limit:
            return image
        scale = limit / max(image.size)
        size = (max(8, int(image.width * scale) // 8 * 8), max(8, int(image.height * scale) // 8 * 8))
        notes.append(
            f"{_display_name(filename)} is {image.width}×{image.height}; it was scaled to "
            f"{size[0]}×{size[1]} to fit the {limit} px limit per side."
        )
        return image.resize(size, PILImage.Resampling.LANCZOS)

    def _failed_request(self, conversation_id: int, text: str) -> str | None:
        """For "try again" right after a turn that failed or was stopped: that turn's words.

        Without this, "try again" re-rolls the last image that was made, which is not what
        failed. A retry of a retry goes back to the words that were first typed; a turn that
        ended without any reply (the process died) counts as stopped.
        """
        if not RETRY.fullmatch(text.strip()):
            return None
        history = self.repo.messages(conversation_id, limit=40)[:-1]  # [-1] is this "try again"
        while history:
            last = history.pop()
            if last.role == "assistant":
                if last.status not in ("failed", "cancelled"):
                    return None
                if not history or history[-1].role != "user":
                    return None
                last = history.pop()
            if not RETRY.fullmatch(last.content.strip()):
                return last.content
        return None

    # ----- running a plan ----------------------------------------------------------------

    def _run_plan(
        self, state: TurnState, upload: Image | None, mask: PILImage.Image | None
    ) -> Generator[Event, None, None]:
        plan = state.plan
        if plan.alternatives:
            # "the fox in 4 styles": each picture is its own call, all of them this one turn
            try:
                for alternative in plan.each_alternative():
                    state.plan = alternative
                    yield from self._run_plan(state, upload, mask)
            finally:
                state.plan = plan
            return
        sources = self._sources(state.conversation_id, plan, upload)
        if plan.intent in (Intent.TRANSFORM, Intent.UPSCALE):
            for source in sources:
                state.images.append(self._transform(source, plan))
            return
        if plan.intent is Intent.REGENERATE:
            for target in sources:
                yield from self._regenerate(state, target)
            return
        operation = plan.operation or Operation.GENERATE
        if operation is Operation.GENERATE:
            # a redraw of one image at another shape ("make #3 square") is that image's child
            redrawn = sources[0] if len(sources) == 1 and sources[0] is not upload else None
            yield from self._backend_call(
                state,
                operation,
                plan.prompt,
                None,
                None,
                plan.size or self._size(None),
                plan.n,
                parent_id=redrawn.id if redrawn is not None else None,
                settings_from=redrawn,
            )
            return
        if not sources:
            raise TurnFailed("That needs an image to work on, and there is none yet.")
        if operation is Operation.INPAINT and mask is None:
            raise TurnFailed("Inpainting needs a mask: upload one (white where the image should change).")
        for source in sources:
            own = plan.for_target(source.number)
            yield from self._backend_call(
                state,
                operation,
                own.prompt,
                source,
                self._fitted_mask(mask, source, state),
                (source.width, source.height),
                plan.n,
                seed=self._edit_seed(plan, operation, source),
                plan=own,
            )

    @staticmethod
    def _fitted_mask(mask: PILImage.Image | None, source: Image, state: TurnState) -> PILImage.Image | None:
        """The user's mask as every backend takes it: "L", 255 = change, the source's size.

        Done once here so a mask means the same area on every backend, and the stored mask is the
        one that was used (a replay sends the same bytes).
        """
        if mask is None:
            return None
        from tools.image_input import prepare_mask

        try:
            fitted, notes = prepare_mask(mask, (source.width, source.height))
        except ToolError as exc:
            raise TurnFailed(exc.user_message) from None
        state.notes.extend(notes)
        return fitted

    def _sources(self, conversation_id: int, plan: Plan, upload: Image | None) -> list[Image]:
        if plan.use_upload:
            if upload is None:
                raise TurnFailed("Please attach the image you want me to work from.")
            return [upload]
        sources: list[Image] = []
        for number in plan.targets:
            try:
                sources.append(self.repo.get_image_by_number(conversation_id, number))
            except NotFound:
                raise TurnFailed(f"There is no image #{number} in this conversation.") from None
        if not sources and upload is not None and plan.intent is not Intent.GENERATE:
            sources.append(upload)
        return sources

    def _size(self, source: Image | None) -> tuple[int, int]:
        if source is not None:
            return source.width, source.height
        return self.default_size()

    def default_size(self) -> tuple[int, int]:
        """The settings' size, else what the backend makes best (OpenAI rejects 512²)."""
        natural = getattr(self.backend, "default_size", None)
        if natural is None:
            natural = BACKEND_DEFAULT_SIZES.get(self.backend.name, (512, 512))
        width, height = natural
        return self.settings.width or width, self.settings.height or height

    def _sampler_settings(self, plan: Plan | None, like: Image | None = None) -> tuple[int, float]:
        """The turn's steps and guidance: what the message asked for, else what the image worked
        on was made with ("40 steps" then "make it snowier" keeps 40), else the settings'."""
        steps = plan.steps if plan is not None else None
        guidance = plan.guidance if plan is not None else None
        if steps is None or guidance is None:
            made = self._made_with(like)
            if steps is None and (inherited := made.get("steps")) is not None:
                # an uploaded file's "Steps: 10000" is not ours to refuse over
                steps = int(inherited) if 1 <= int(inherited) <= self.settings.max_steps else None
            if guidance is None and (inherited := made.get("guidance")) is not None:
                guidance = float(inherited)
        return (
            self.settings.steps if steps is None else steps,
            self.settings.guidance if guidance is None else guidance,
        )

    def _chosen_sampler(self, image: Image | None) -> str | None:
        """The sampler the user last named for `image` or an image it came from ("use euler a"
        then "make it snowier" keeps Euler a), as the call that made it was asked; else None, the
        model's own. Uploads end the walk: their sampler was another program's."""
        for _ in range(INHERIT_LOOKBACK_IMAGES):
            if image is None or image.operation == "upload":
                return None
            if image.generation_id is not None:
                with contextlib.suppress(NotFound):
                    options = (self.repo.generation(image.generation_id)[0].params or {}).get("options") or {}
                    if isinstance(chosen := options.get("sampler"), str) and chosen:
                        return chosen
            if image.parent_id is None:
                return None
            try:
                image = self.repo.get_image(image.parent_id)
            except NotFound:
                return None
        return None

    def _made_with(self, image: Image | None) -> dict[str, float]:
        """Steps and guidance of `image`, each from the nearest image it came from that has it.

        A flip or crop has no steps of its own; an edit of it should still keep the original's.
        A backend that ignores guidance (offline, OpenAI) reports none for its image; the call's
        record still holds what the user asked for, and that is what a later edit keeps. One walk
        up the lineage finds both.
        """
        found: dict[str, float] = {}
        for _ in range(INHERIT_LOOKBACK_IMAGES):
            if image is None:
                break
            params = image.params or {}
            recorded: dict[str, Any] = {}
            if image.operation == "upload":  # what the file says made it (A1111 "Steps: 30")
                embedded = params.get("embedded") or {}
                recorded = {key: number_or_none(embedded.get(name)) for key, name in EMBEDDED_NAMES.items()}
            else:
                recorded = {key: params.get(key) for key in EMBEDDED_NAMES}
                if any(v is None for v in recorded.values()) and image.generation_id is not None:
                    with contextlib.suppress(NotFound):
                        asked = self.repo.generation(image.generation_id)[0].params or {}
                        recorded = {k: v if v is not None else asked.get(k) for k, v in recorded.items()}
            for key, value in recorded.items():
                if key not in found and isinstance(value, int | float) and not isinstance(value, bool):
                    found[key] = float(value)
            if len(found) == len(EMBEDDED_NAMES) or image.parent_id is None:
                break
            try:
                image = self.repo.get_image(image.parent_id)
            except NotFound:
                break
        return found

    def _check_limits(
        self, width: int, height: int, n: int, steps: int | None = None, guidance: float | None = None
    ) -> None:
        """Refuse a call over the caps, before it is made; pixels count for the whole turn."""
        settings = self.settings
        steps = settings.steps if steps is None else steps
        if n > settings.max_n:
            raise TurnFailed(f"At most {settings.max_n} images per request.")
        if max(width, height) > settings.max_side:
            raise TurnFailed(f"{width}×{height} is too large; the limit is {settings.max_side} px per side.")
        if min(width, height) < MIN_SIDE:
            raise TurnFailed(f"{width}×{height} is too small; each side needs at least {MIN_SIDE} px.")
        most, why = settings.max_steps, "ATELIER_MAX_STEPS"
        backend_most = BACKEND_MAX_STEPS.get(self.backend.name)
        if backend_most is not None and backend_most[1] < most:
            most, why = backend_most[1], f"the most {backend_most[0]} takes"
        if not 1 <= steps <= most:
            raise TurnFailed(f"{steps} steps is out of range; use 1 to {most} ({why}).")
        if guidance is not None and not 0 <= guidance <= MAX_GUIDANCE:
            raise TurnFailed(
                f"CFG scale {guidance:g} is out of range; use 0 to {MAX_GUIDANCE} (5 to 9 is usual)."
            )
        pixels = width * height * n
        so_far = self.turn_usage.pixels
        if so_far + pixels > settings.max_pixels_per_turn:
            already = f" on top of the {so_far:,} this turn has already made" if so_far else ""
            raise TurnFailed(
                f"{n} × {width}×{height}{already} is more pixels than one turn may make "
                f"({settings.max_pixels_per_turn:,}); ask for fewer or smaller images."
            )
        self.turn_usage.pixels += pixels

    def _seed(self, plan: Plan, previous: int | None = None) -> int:
        """The turn's seed: the one asked for, else the settings' fixed one, else a fresh draw.

        A seed out of range is refused rather than wrapped, so the stored seed is the one the
        user typed; -1 means "random", as in AUTOMATIC1111.
        """
        if plan.seed is not None and plan.seed != -1:
            if not 0 <= plan.seed <= MAX_SEED:
                raise TurnFailed(
                    f"Seeds are whole numbers from 0 to {MAX_SEED} (got {plan.seed}); -1 means random."
                )
            return plan.seed
        if plan.seed is None and not plan.new_seed and self.settings.seed is not None:
            return self.settings.seed  # validated: 0 to MAX_SEED
        seed = secrets.randbelow(2**32)
        while seed == previous:
            seed = secrets.randbelow(2**32)
        return seed

    def _edit_seed(self, plan: Plan, operation: Operation, source: Image) -> int | None:
        """Edits keep the source's seed, so what the user didn't ask to change stays put.

        Variations (and an explicit "new seed" or "seed 42") draw their own.
        """
        keeps_layout = operation in (Operation.EDIT, Operation.INPAINT, Operation.IMG2IMG)
        if keeps_layout and source.seed is not None and plan.seed is None and not plan.new_seed:
            return source.seed
        return None

    def _check_budget(self, conversation_id: int, backend: ImageBackend, request: ImageRequest) -> None:
        """Refuse a call that could take the conversation over its budget, before it is made.

        Calls made earlier in this turn count with their estimate until they are recorded.
        """
        budget = self.settings.cost_budget_usd
        if budget is None:
            return
        spent = sum(g.cost_usd or 0.0 for g in self.repo.generations(conversation_id))
        spent += self.turn_usage.pending_usd
        if spent >= budget:
            raise TurnFailed(
                f"This conversation has used its budget (${spent:.2f} of ${budget:.2f}); "
                "raise ATELIER_COST_BUDGET_USD or start a new conversation."
            )
        try:
            estimate = backend.estimate_cost(request)
        except ToolError as exc:  # the request itself is invalid: the same message the call would give
            raise TurnFailed(exc.user_message) from None
        if estimate is not None and spent + estimate > budget:
            raise TurnFailed(
                f"This could cost up to ${estimate:.2f} (an estimate that errs high), and this "
                f"conversation has ${budget - spent:.2f} of its ${budget:.2f} budget left. Ask for fewer, "
                "smaller or lower-quality images, raise ATELIER_COST_BUDGET_USD, or start a new conversation."
            )
        self.turn_usage.pending_usd += estimate or 0.0

    def _backend_call(
        self,
        state: TurnState,
        operation: Operation,
        prompt: str,
        source: Image | None,
        mask: PILImage.Image | None,
        size: tuple[int, int],
        n: int,
        *,
        seed: int | None = None,
        parent_id: int | None = None,
        strength: float | None = None,
        regenerated_from: int | None = None,
        settings_from: Image | None = None,
        plan: Plan | None = None,
    ) -> Generator[Event, None, None]:
        """`settings_from` is the image whose steps and guidance the call keeps unless the message
        sets them: the source of an edit or variation, the target of a re-roll. `plan` is the
        turn's plan as it applies to this source, when an edit of several gives each its own prompt."""
        plan = plan or state.plan
        width, height = size
        like = settings_from or source
        steps, guidance = self._sampler_settings(plan, like)
        self._check_limits(width, height, n, steps, guidance)
        backend = self.backend
        seed = self._seed(plan) if seed is None else seed
        strength = plan.strength if strength is None else strength
        if strength is not None and not 0 <= strength <= 1:
            raise TurnFailed(
                f"Strength {strength:g} is out of range; use 0 to 1 (0.3 keeps most of the picture, "
                "0.8 changes most of it)."
            )
        negative = plan.negative_prompt if backend.name not in BACKENDS_WITHOUT_NEGATIVE_PROMPT else ""
        options: dict[str, Any] = {}
        if plan.style:
            options["style"] = plan.style
        if backend.name in BACKENDS_WITH_SAMPLERS:
            if sampler := plan.sampler or self._chosen_sampler(like):
                options["sampler"] = sampler
        elif plan.sampler and not any(plan.sampler in note for note in state.notes):
            state.notes.append(
                f"The {backend.name} backend has no sampler to choose; “{plan.sampler}” was not used."
            )
        request = ImageRequest(
            operation=operation,
            prompt=prompt,
            negative_prompt=negative,
            width=width,
            height=height,
            n=n,
            seed=seed,
            steps=steps,
            guidance=guidance,
            strength=strength,
            sources=(self.repo.load_image(source),) if source is not None else (),
            mask=mask,
            options=options,
        )
        self._check_budget(state.conversation_id, backend, request)
        request_record = {
            "operation": operation.value,
            "width": width,
            "height": height,
            "strength": strength,
            "options": options,
        }
        if regenerated_from is not None:  # a re-roll of a root has no parent to show where it came from
            request_record["regenerated_from"] = regenerated_from
        # the call's record keeps what was offered; an image's record keeps what its backend
        # reports it used (OpenAI has no steps or guidance, so its images say none)
        offered = {"steps": steps, "guidance": guidance}
        started = time.monotonic()
        generation = NewGeneration(
            operation=operation.value,
            backend=backend.name,
            model=backend.model,
            prompt=prompt,
            negative_prompt=negative,
            params=request_record | offered | {"seed": seed, "n": n},
            inputs=[(source.id, "init")] if source is not None else (),
        )
        stopped = False
        try:
            result = yield from self._call_backend(state.conversation_id, backend, request)
        except GeneratorExit:
            state.interrupted = replace(
                generation, status="cancelled", error=INTERRUPTED, duration_ms=_ms_since(started)
            )
            raise
        except Cancelled as exc:
            if exc.finished is None:
                cancelled = replace(
                    generation, status="cancelled", error=exc.user_message, duration_ms=_ms_since(started)
                )
                raise TurnFailed(exc.user_message, cancelled) from None
            result, stopped = exc.finished, True  # the images finished before Stop are kept
        except ToolError as exc:
            failed = replace(
                generation, status="failed", error=exc.user_message, duration_ms=_ms_since(started)
            )
            raise TurnFailed(exc.user_message, failed) from None
        except Exception as exc:
            log.exception("backend %s failed", backend.name)
            message = (
                f"The {backend.name} backend failed unexpectedly ({type(exc).__name__}). "
                "Nothing was lost; please try again."
            )
            raise TurnFailed(message, replace(generation, status="failed", error=message)) from None
        state.notes.extend(result.notes)
        same = (
            source is not None
            and bool(request.sources)
            and _all_same_pixels(request.sources[0], result.images)
        )
        state.unchanged = same and (state.unchanged or not state.generations)
        if source is not None and same:
            # "Edited: 1 image." over an unchanged picture would be a lie
            elsewhere = " or a neural backend (diffusers, OpenAI)" if backend.name == "offline" else ""
            state.notes.append(
                f"“{one_line(plan.instruction)}” changed nothing: the result is pixel for pixel "
                f"#{source.number}. The {backend.name} backend could not draw that change; try other "
                f"words{elsewhere}."
            )
        if regenerated_from is not None and not same:
            self._note_same_as_rerun_target(state, backend.name, regenerated_from, result.images)
        images = [
            NewImage(
                image=generated.image,
                operation=operation.value,
                backend=result.backend,
                model=result.model,
                prompt=prompt,
                negative_prompt=negative,
                instruction=plan.instruction,
                revised_prompt=generated.revised_prompt,
                seed=generated.seed,
                params={**request_record, **result.params, "seed": generated.seed, "style": plan.style},
                parent_id=parent_id if parent_id is not None else (source.id if source is not None else None),
                mask=mask if operation is Operation.INPAINT else None,
            )
            for generated in result.images
        ]
        state.generations.append(
            replace(
                generation,
                status="cancelled" if stopped else "ok",
                error=STOPPED_PART_WAY if stopped else None,
                model=result.model,
                params={**generation.params, **result.params},
                duration_ms=_ms_since(started),
                usage=result.usage,
                cost_usd=result.cost_usd,
                images=images,
            )
        )
        if stopped:
            raise TurnFailed(STOPPED_PART_WAY, None, cancelled=True)

    def _call_backend(
        self, conversation_id: int, backend: ImageBackend, request: ImageRequest
    ) -> Generator[Event, None, ImageResult]:
        """Run the backend in a worker thread so progress reaches the renderer as it happens."""
        events: queue.Queue[Event | None] = queue.Queue()
        outcome: dict[str, Any] = {}
        cancel = self.cancel_token

        def progress(step: int, total: int) -> None:
            events.put(Progress(conversation_id, step, total))

        def work() -> None:
            try:
                outcome["result"] = backend.run(request, progress, cancel)
            except BaseException as exc:
                outcome["error"] = exc
            finally:
                events.put(None)

        worker = threading.Thread(target=work, name="atelier-backend", daemon=True)
        worker.start()
        interrupted = False
        try:
            while (event := events.get()) is not None:
                yield event
        except KeyboardInterrupt:  # Ctrl-C in a terminal: stop like the cancel button does
            interrupted = True
        finally:
            if worker.is_alive():  # the renderer went away mid-turn: stop between steps
                cancel.cancel()
            worker.join()
        if interrupted:  # what the worker finished before it saw the cancel is kept
            error, finished = outcome.get("error"), outcome.get("result")
            raise error if isinstance(error, Cancelled) else Cancelled(finished)
        if "error" in outcome:
            raise outcome["error"]
        result: ImageResult = outcome["result"]
        return result

    def _note_same_as_rerun_target(
        self, state: TurnState, backend_name: str, target_id: int, results: Sequence[Any]
    ) -> None:
        """ "cfg 12" re-runs #3 at its seed; a backend that ignores the setting gives #3 again,
        and the reply "#3 again, guidance 12" alone would promise a difference."""
        with contextlib.suppress(NotFound, StorageError, OSError):
            target = self.repo.get_image(target_id)
            if _all_same_pixels(self.repo.load_image(target), results):
                why = (
                    " (the sketch renderer ignores steps, CFG and strength)"
                    if backend_name == "offline"
                    else ""
                )
                state.notes.append(
                    f"The result is pixel for pixel #{target.number}: the {backend_name} backend draws it "
                    f"the same with these settings{why}. They are recorded for a model that uses them."
                )

    def _regenerate(self, state: TurnState, target: Image) -> Generator[Event, None, None]:
        """A new seed for the same request; the result is a sibling of the target."""
        operation = Operation(target.operation)
        if operation in (Operation.TRANSFORM, Operation.UPSCALE):
            raise TurnFailed(
                f"#{target.number} is a {operation.value} of another image; it has no seed to change."
            )
        if operation is Operation.UPLOAD:
            raise TurnFailed(f"#{target.number} is an upload; there is nothing to regenerate.")
        parent = self.repo.get_image(target.parent_id) if target.parent_id is not None else None
        if operation in BACKEND_OPERATIONS_NEEDING_SOURCE and parent is None:
            raise TurnFailed(f"The image #{target.number} was made from is gone, so I can't redo it.")
        params = target.params or {}
        mask = self.repo.load_mask(target)
        plan = state.plan
        # a re-roll is a sibling of the target; the same image at a new shape is its child
        reshaped = plan.size is not None and plan.size != (target.width, target.height)
        # one image re-run may change its negative prompt ("negative: text"); a batch keeps each one's
        negative = plan.negative_prompt if len(plan.targets) == 1 else target.negative_prompt
        # "strength 0.3" said of it changes how far it moves from its source; else it keeps its own
        strength = plan.strength if plan.strength is not None else params.get("strength")
        fresh_plan = replace(plan, new_seed=True, strength=strength, negative_prompt=negative)
        state.plan = fresh_plan
        yield from self._backend_call(
            state,
            operation,
            target.prompt,
            parent,
            mask,
            plan.size or (int(params.get("width", target.width)), int(params.get("height", target.height))),
            max(1, plan.n),
            seed=self._seed(fresh_plan, previous=target.seed),
            parent_id=target.id if reshaped else target.parent_id,
            strength=strength,
            regenerated_from=target.id,
            settings_from=target,
        )
        state.plan = plan

    def _transform(self, source: Image, plan: Plan) -> NewImage:
        from tools.transforms import apply_transform

        name = plan.transform or ("upscale" if plan.intent is Intent.UPSCALE else "")
        args = dict(plan.transform_args)
        limit = self.settings.max_side
        factor, side = args.get("factor", 2), max(source.width, source.height)
        if name == "upscale" and isinstance(factor, int) and side * factor > limit:
            # said before the work: the largest upscale that fits, if any, is what to ask for
            width, height = source.width * factor, source.height * factor
            fits = (
                f" 2× ({source.width * 2}×{source.height * 2}) fits: say “upscale #{source.number} 2x”."
                if side * 2 <= limit
                else ""
            )
            raise TurnFailed(
                f"That upscale of #{source.number} would be {width}×{height}; "
                f"the limit is {limit} px per side (ATELIER_MAX_SIDE).{fits}"
            )
        try:
            pixels = apply_transform(self.repo.load_image(source), name, **args)
        except ToolError as exc:
            raise TurnFailed(exc.user_message) from None
        except TypeError:
            raise TurnFailed(f"The {name} transform does not take {sorted(args)}.") from None
        # the same cap as a backend call: an image Atelier makes is one it can edit again
        if max(pixels.size) > limit:
            raise TurnFailed(
                f"That {name} of #{source.number} would be {pixels.width}×{pixels.height}; the limit is "
                f"{limit} px per side (ATELIER_MAX_SIDE)."
            )
        return NewImage(
            image=pixels,
            operation="upscale" if name == "upscale" else "transform",
            backend="transform",
            model="pillow",
            prompt=source.prompt,
            negative_prompt=source.negative_prompt,
            instruction=plan.instruction,
            seed=None,
            params={"transform": name, "args": args},
            parent_id=source.id,
        )

    # ----- replies -------------------------------------------------------------------------

    def _answer(self, conversation_id: int, plan: Plan) -> str:
        if plan.intent is not Intent.DESCRIBE:
            return plan.reply or "How can I help?"
        images = self.repo.conversation_images(conversation_id)
        content = asked_content(plan.instruction or "")
        if content is not None and content.kind == "which":
            return describe_which(images, content)  # "which one has the fox?"
        if plan.question_kind == "list" or not plan.targets:
            return describe_list(images)
        parts = []
        for number in plan.targets:
            try:
                image = self.repo.get_image_by_number(conversation_id, number)
            except NotFound:
                parts.append(f"There is no image #{number} in this conversation.")
                continue
            fields = asked_fields(plan.instruction or "")
            if plan.question_kind == "lineage":
                parts.append(describe_lineage(self.repo, image))
            elif content is not None:
                # "is there a dog in #2?": what its prompt asked for, never a guess at the pixels
                parts.append(describe_content(image, content))
            elif set(fields) - {"prompt"} and image.operation != "upload":
                # "what was the negative prompt?": that setting, said even when it is "none"
                parts.append(
                    describe_fields(
                        image,
                        fields,
                        self._asked_params(image),
                        self.repo.image_path(image),
                        self._took_ms(image),
                    )
                )
            else:
                parts.append(describe_prompt(image, self._asked_params(image)))
        return "\n\n".join(parts)

    def _took_ms(self, image: Image) -> int | None:
        """How long the call that made `image` ran, as its generation row says (None: no call)."""
        if image.generation_id is None:
            return None
        with contextlib.suppress(NotFound):
            return self.repo.generation(image.generation_id)[0].duration_ms
        return None

    def _asked_params(self, image: Image) -> dict[str, object]:
        if image.generation_id is None:
            return {}
        with contextlib.suppress(NotFound):
            return dict(self.repo.generation(image.generation_id)[0].params or {})
        return {}

    def _success_reply(self, state: TurnState) -> str:
        """ "Edited #3: 1 image.", "Flipped #2 horizontally: 1 image.": what was done to which
        image, so a reply read later (or in a long chat) says more than "Done"."""
        plan = state.plan
        count = len(state.images) + sum(len(g.images) for g in state.generations)
        named = [f"#{n}" for n in plan.targets]
        which = ", ".join(named[:-1]) + " and " + named[-1] if len(named) > 1 else "".join(named)
        of = f" {which}" if which else ""
        verb = {
            Intent.GENERATE: "Here you go",
            Intent.EDIT: f"Edited{of}",
            Intent.INPAINT: f"Repainted the masked area{' of' + of if of else ''}",
            Intent.VARIATION: f"Variations{' of' + of if of else ''}",
            Intent.IMG2IMG: f"Redrawn from {which or 'your image'}",
            Intent.UPSCALE: f"Upscaled{of} {plan.transform_args.get('factor', 2)}×",
            Intent.TRANSFORM: _transform_words(plan, of),
            Intent.REGENERATE: _rerun_words(plan, of),
        }.get(plan.intent, "Done")
        text = f"{verb}: {count} image{'s' if count != 1 else ''}."
        if state.unchanged:
            plural = count != 1
            text = (
                f"No visible change{' to' + of if of else ''}: {count} image{'s' if plural else ''} stored, "
                f"pixel for pixel {'their' if plural else 'its'} source."
            )
        if plan.reply:
            text = f"{plan.reply} {text}"
        return self._with_notes(text, state)

    def _new_notes(self, conversation_id: int, notes: list[str]) -> list[str]:
        """Drop notes this conversation has already shown (e.g. "offline sketch renderer" every turn)."""
        seen: set[str] = set()
        for message in self.repo.messages(conversation_id, limit=200):
            seen.update((message.plan or {}).get("notes") or [])
        unique: list[str] = []
        for note in notes:
            if note and note not in seen and note not in unique:
                unique.append(note)
        return unique

    @staticmethod
    def _with_notes(text: str, state: TurnState) -> str:
        notes = [note for note in state.notes if note]
        return text if not notes else text + "\n\n" + "\n".join(f"Note: {note}" for note in notes)

    def _planned_size(self, plan: Plan, like: Image | None) -> tuple[int, int] | None:
        """The size the turn's images will have, as the progress card shows it before they exist:
        an edit, img2img or re-run is its source's size (an upload's too), not the default; a
        transform's depends on its arguments, so it has none to show."""
        if plan.size is not None:
            return plan.size
        if plan.intent is Intent.TRANSFORM:
            return None
        if like is None or plan.intent is Intent.GENERATE:
            return self.default_size()
        if plan.intent is Intent.UPSCALE:
            factor = plan.transform_args.get("factor", 2)
            if not isinstance(factor, int | float) or isinstance(factor, bool):
                return None  # the transform refuses it, with its own message
            return round(like.width * factor), round(like.height * factor)
        return like.width, like.height

    def _plan_event(
        self, conversation_id: int, plan: Plan, tool_calls: Sequence[dict[str, Any]], notes: list[str]
    ) -> PlanMade:
        backend = self.backend
        like = None
        if plan.targets and not plan.is_reply_only:
            with contextlib.suppress(NotFound):
                like = self.repo.get_image_by_number(conversation_id, plan.targets[0])
        steps, guidance = self._sampler_settings(plan, like)
        params: dict[str, Any] = {"n": plan.n, "steps": steps, "guidance": guidance}
        if (size := self._planned_size(plan, like)) is not None:
            params["size"] = "{}x{}".format(*size)
        if plan.strength is not None:
            params["strength"] = plan.strength
        if plan.seed is not None:
            params["seed"] = plan.seed
        if plan.style:
            params["style"] = plan.style
        if plan.transform:
            params["transform"] = plan.transform
            params["transform_args"] = dict(plan.transform_args)
        prompts = {f"#{number}": str(own.get("prompt", "")) for number, own in plan.per_target.items()}
        if len(set(prompts.values())) > 1:  # "add a moon to #1 and #3": each keeps its own picture
            params["prompts"] = prompts
        if plan.alternatives:  # "the fox in 4 styles": what each picture is
            params["alternatives"] = [a.get("style") or a.get("prompt", "") for a in plan.alternatives]
        return PlanMade(
            conversation_id,
            intent=plan.intent.value,
            targets=list(plan.targets),
            instruction=plan.instruction,
            prompt=plan.prompt,
            negative_prompt=plan.negative_prompt,
            params=params,
            backend=backend.name,
            model=backend.model,
            planner=self.planner_name,
            tool_calls=list(tool_calls),
            notes=list(notes),
        )

    def _fail(
        self,
        conversation_id: int,
        plan: Plan | None,
        failure: TurnFailed,
        tool_calls: Sequence[dict[str, Any]] = (),
    ) -> Iterator[Event]:
        """Record the failed turn with its reason, then report it; the conversation stays usable."""
        plan_record: dict[str, Any] = plan.to_dict() if plan is not None else {}
        plan_record["error"] = failure.message
        plan_record["tool_calls"] = list(tool_calls)
        try:
            self.repo.record_failure(
                conversation_id,
                reply=failure.message,
                plan=plan_record,
                generation=failure.generation,
                status="cancelled" if failure.cancelled else "failed",
            )
            self.turn_usage.pending_usd = 0.0  # a failed call is on record and cost nothing
        except StorageError:
            log.exception("could not record a failed turn")
        yield Failed(conversation_id, failure.message, cancelled=failure.cancelled)

    def _keep_finished(
        self, state: TurnState, failure: TurnFailed, tool_calls: Sequence[dict[str, Any]]
    ) -> Iterator[Event]:
        """Stop pressed part way: the images already made are stored, numbered and shown.

        A1111's Interrupt keeps the finished images of a batch; throwing away #5 and #6 because
        #7 was stopped would lose work the user watched appear. The turn still ends as stopped
        (status "cancelled"), so an agent stops too and "try again" re-runs the whole request.
        """
        conversation_id = state.conversation_id
        generations = list(state.generations)
        if failure.generation is not None:  # the call that was stopped before it made anything
            generations.append(failure.generation)
        made = sum(len(generation.images) for generation in generations) + len(state.images)
        reply = (
            f"Stopped: kept the {made} image{'s' if made != 1 else ''} finished before you stopped; "
            "the rest were not made. Say “try again” to run the whole request again."
        )
        state.notes = self._new_notes(conversation_id, state.notes)
        reply = self._with_notes(reply, state)
        try:
            record = self.repo.record_turn(
                conversation_id,
                reply=reply,
                status="cancelled",
                plan={**state.plan.to_dict(), "tool_calls": list(tool_calls), "notes": state.notes},
                generations=generations,
                images=state.images,
            )
        except StorageError as exc:
            yield from self._fail(conversation_id, state.plan, TurnFailed(str(exc)), tool_calls)
            return
        self.turn_usage.pending_usd = 0.0
        yield from self._images_ready(conversation_id, record.images)
        yield Failed(conversation_id, reply, cancelled=True)

    def _record_stopped(
        self, conversation_id: int, plan: Plan, state: TurnState, tool_calls: Sequence[dict[str, Any]]
    ) -> None:
        """A turn whose renderer went away still ends in the record, as cancelled.

        Nothing can be yielded any more (the generator is closing), so this only writes.
        """
        message = INTERRUPTED
        plan_record = {**plan.to_dict(), "error": message, "tool_calls": list(tool_calls)}
        try:
            self.repo.record_failure(
                conversation_id,
                reply=message,
                plan=plan_record,
                generation=state.interrupted,
                status="cancelled",
            )
        except StorageError:
            log.exception("could not record a stopped turn")

    # ----- replay ----------------------------------------------------------------------------

    def replay(self, image_id: int) -> tuple[Image, PILImage.Image, bool]:
        """Re-run an image's recorded request; returns (original, new pixels, identical?).

        Identical means the same PNG file: the same bytes as stored, hash for hash.
        """
        from storage.files import sha256_hex
        from storage.pngmeta import encode_png
        from storage.repository import image_infotext, image_lineage_chunk

        original = self.repo.get_image(image_id)
        source = self.repo.get_image(original.parent_id) if original.parent_id is not None else None
        source_pixels = self._replay_source(original, source)
        self.turn_usage = TurnUsage()
        if original.operation == "upload":
            raise InvalidRequest(f"Image {image_id} is an upload; there is nothing to replay.")
        if original.operation in MODEL_FREE_OPERATIONS:
            if source_pixels is None:
                raise InvalidRequest(f"The source of image {image_id} is gone; it cannot be replayed.")
            pixels = self._replay_transform(original, source_pixels)
        else:
            request = self._request_from_record(original, original.seed, source_pixels)
            request, index = _as_its_batch(request, original)
            backend = self._backend_for(original)
            self._check_replay_allowed(original.conversation_id, backend, request)
            pixels = backend.run(request).images[index].image
        data = encode_png(pixels, image_infotext(original), image_lineage_chunk(original))
        identical = sha256_hex(data) == original.sha256
        if identical and not self.repo.file_intact(original):
            self.repo.restore_file(original, data)  # the very bytes the record names come back
        return original, pixels, identical

    def _same_picture(self, stored: Image, pixels: PILImage.Image) -> bool:
        """`pixels` are the stored image's, exactly (False when its file cannot be read)."""
        try:
            original = self.repo.load_image(stored)
        except (StorageError, OSError, NotFound):
            return False
        return (
            original.size == pixels.size
            and original.convert("RGBA").tobytes() == pixels.convert("RGBA").tobytes()
        )

    def _replay_source(self, image: Image, source: Image | None) -> PILImage.Image | None:
        """The pixels `image` was made from; a lost source file says how to get it back first."""
        if source is None:
            return None
        try:
            return self.repo.load_image(source)
        except ImageFileDamaged:
            if source.operation == "upload":
                how = "it is an upload, so only an export (`atelier import`) can bring it back"
            else:
                how = f"`atelier replay {source.id}` restores it if it replays identically; then replay this"
            raise InvalidRequest(
                f"The file of #{source.number} (image {source.id}), which image {image.id} was made from, "
                f"is missing or damaged; {how}."
            ) from None

    def _backend_for(self, image: Image) -> ImageBackend:
        backend = self.backend
        if backend.name != image.backend:
            raise InvalidRequest(
                f"Image {image.id} was made by the {image.backend} backend, but {backend.name} is active; "
                f"switch with ATELIER_BACKEND={image.backend} to replay it."
            )
        if image.model and backend.model != image.model:
            # another model's pixels are not a replay: say which one made it and how to get it back
            setting = _MODEL_SETTINGS.get(backend.name)
            how = f"set {setting}={image.model}" if setting else f"use the {image.model} version of it"
            raise InvalidRequest(
                f"Image {image.id} was made with the model {image.model}, but {backend.model} is configured; "
                f"{how} to replay it."
            )
        return backend

    def _check_replay_allowed(
        self, conversation_id: int, backend: ImageBackend, request: ImageRequest
    ) -> None:
        """A replay is held to the same caps and budget as the turn that made the image."""
        try:
            self._check_limits(request.width, request.height, request.n, request.steps, request.guidance)
            self._check_budget(conversation_id, backend, request)
        except TurnFailed as failure:
            raise InvalidRequest(failure.message) from None

    def _request_from_record(
        self, image: Image, seed: int | None, source: PILImage.Image | None
    ) -> ImageRequest:
        """The backend request an image row describes, on the given source pixels."""
        params = image.params or {}
        operation = Operation(image.operation)
        if operation in BACKEND_OPERATIONS_NEEDING_SOURCE and source is None:
            raise InvalidRequest(f"The source of image {image.id} is gone; it cannot be replayed.")
        return ImageRequest(
            operation=operation,
            prompt=image.prompt,
            negative_prompt=image.negative_prompt,
            width=int(params.get("width", image.width)),
            height=int(params.get("height", image.height)),
            n=1,
            seed=seed,
            steps=params.get("steps"),
            guidance=params.get("guidance"),
            strength=params.get("strength"),
            sources=(source,) if source is not None and operation is not Operation.GENERATE else (),
            mask=self.repo.load_mask(image),
            options=dict(params.get("options") or {}),
        )

    def _replay_transform(self, step: Image, source: PILImage.Image) -> PILImage.Image:
        from tools.transforms import apply_transform

        params = step.params or {}
        return apply_transform(source, str(params.get("transform")), **dict(params.get("args") or {}))

    def _check_chain_allowed(self, chain: Sequence[Image], backend: ImageBackend) -> None:
        """Hold every step to the caps and the budget before the first runs: a refused chain costs nothing.

        The new branch has the sizes of the old one, so each step is checked as the request it
        was, on its old source.
        """
        for index, step in enumerate(chain):
            if step.operation == "upload" or step.operation in MODEL_FREE_OPERATIONS:
                continue
            source = self.repo.load_image(chain[index - 1]) if index > 0 else None
            request = self._request_from_record(step, step.seed, source)
            try:
                self._check_replay_allowed(step.conversation_id, backend, request)
            except InvalidRequest as refused:
                raise InvalidRequest(
                    f"Replaying #{step.number} of the chain: {refused.user_message}"
                ) from None

    def replay_chain(
        self,
        image_id: int,
        *,
        seed: int | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> list[Image]:
        """Re-run the edit chain from the root with one change; the new branch is added beside the old.

        The branch is computed first and stored as one turn, so a failure half-way (a limit, the
        budget, a backend error) leaves nothing half-written. Without --seed every step reuses its
        seed. With it, the root takes the new seed, a step that kept its parent's seed (an edit
        keeps the source's layout that way) keeps the new parent's, and a step that drew its own
        (a variation) draws seed + its place in the chain, so the new branch is reproducible too.
        """
        if seed is not None and not 0 <= seed <= MAX_SEED:
            raise InvalidRequest(f"Seeds are whole numbers from 0 to {MAX_SEED} (got {seed}).")
        target = self.repo.get_image(image_id)
        conversation_id = target.conversation_id
        chain = [*self.repo.ancestors(image_id), target]
        self.turn_usage = TurnUsage()
        backend = self.backend
        self._check_chain_allowed(chain, backend)
        generations: list[NewGeneration] = []
        loose: list[NewImage] = []
        new_seeds: dict[int, int | None] = {}
        differing: list[int] = []
        parent: Image | NewImage | None = None  # the new branch's image so far (an upload is shared)
        parent_pixels: PILImage.Image | None = None
        for index, step in enumerate(chain):
            if step.operation == "upload":
                parent, parent_pixels = step, self.repo.load_image(step)
                new_seeds[step.id] = None
                continue
            previous = chain[index - 1] if index > 0 else None
            new_image: NewImage
            if step.operation in MODEL_FREE_OPERATIONS:
                if parent_pixels is None:
                    raise InvalidRequest(f"Image {step.id} has no source to transform.")
                new_image = NewImage(
                    image=self._replay_transform(step, parent_pixels),
                    operation=step.operation,
                    backend="transform",
                    model="pillow",
                    prompt=step.prompt,
                    negative_prompt=step.negative_prompt,
                    instruction=step.instruction,
                    params={**_own_params(step), "replay_of": step.id},
                )
                new_seeds[step.id] = new_seeds.get(previous.id) if previous is not None else None
                loose.append(new_image)
            else:
                step_seed = _replay_seed(step, previous, index, seed, new_seeds)
                request = self._request_from_record(step, step_seed, parent_pixels)
                started = time.monotonic()
                result = backend.run(request)
                generated = result.images[0]
                new_seeds[step.id] = generated.seed
                new_image = NewImage(
                    image=generated.image,
                    operation=step.operation,
                    backend=result.backend,
                    model=result.model,
                    prompt=step.prompt,
                    negative_prompt=step.negative_prompt,
                    instruction=step.instruction,
                    revised_prompt=generated.revised_prompt,
                    seed=generated.seed,
                    params={
                        **_own_params(step, keep_backend_params=step.backend == result.backend),
                        **result.params,
                        "seed": generated.seed,
                        "replay_of": step.id,
                    },
                    mask=request.mask if request.operation is Operation.INPAINT else None,
                )
                inputs: list[tuple[int | NewImage, str]] = []
                if parent is not None and request.sources:
                    inputs.append((parent.id if isinstance(parent, Image) else parent, "init"))
                generations.append(
                    NewGeneration(
                        operation=step.operation,
                        backend=result.backend,
                        model=result.model,
                        prompt=step.prompt,
                        negative_prompt=step.negative_prompt,
                        params={**result.params, "seed": generated.seed, "n": 1, "replay_of": step.id},
                        duration_ms=_ms_since(started),
                        usage=result.usage,
                        cost_usd=result.cost_usd,
                        inputs=inputs,
                        images=[new_image],
                    )
                )
            if isinstance(parent, NewImage):
                new_image.parent = parent
            elif parent is not None:
                new_image.parent_id = parent.id
            # pixels, not files: the new file's lineage chunk names the new image
            same = self._same_picture(step, new_image.image)
            new_image.params = {**new_image.params, "replay_identical": same}
            if not same:
                differing.append(step.number)
            parent, parent_pixels = new_image, new_image.image
            if progress is not None:
                progress(f"#{step.number} re-run ({index + 1} of {len(chain)})")
        numbers = " → ".join(f"#{step.number}" for step in chain)
        change = f" with seed {seed}" if seed is not None else ""
        if seed is not None:
            verdict = ""  # another seed is meant to differ
        elif not differing:
            verdict = " Every step came out identical to the original, pixel for pixel."
        else:
            verdict = " Not identical to the original: " + ", ".join(f"#{n}" for n in differing) + "."
        record = self.repo.record_turn(
            conversation_id,
            reply=f"Replayed {numbers} from the root{change} on {backend.name} as a new branch.{verdict}",
            plan={"intent": "replay", "source_image_id": target.id, "seed": seed, "backend": backend.name},
            generations=generations,
            images=loose,
        )
        return sorted(record.images, key=lambda image: image.number)


def _replay_seed(
    step: Image, previous: Image | None, index: int, seed: int | None, new_seeds: dict[int, int | None]
) -> int | None:
    """The seed a step of a replayed chain runs with (see `Assistant.replay_chain`)."""
    if seed is None:
        return step.seed
    if previous is None or previous.operation == "upload":
        return seed % 2**32
    if step.seed is not None and step.seed == previous.seed:
        return new_seeds.get(previous.id)
    return (seed + index) % 2**32


def _transform_words(plan: Plan, of: str) -> str:
    """What a Pillow transform did, in words: "Flipped #3 horizontally", "Cropped #1 to 16:9"."""
    args = plan.transform_args
    name = plan.transform or ""
    if name == "flip":
        return f"Flipped{of} {args.get('direction', 'horizontal')}ly"
    if name == "rotate" and isinstance(degrees := args.get("degrees"), int | float):
        return f"Rotated{of} {abs(degrees):g}° {'left' if degrees > 0 else 'right'}"
    if name == "crop":
        return f"Cropped{of}" + (f" to {args['aspect']}" if args.get("aspect") else "")
    if name == "resize" and args.get("width") and args.get("height"):
        return f"Resized{of} to {args['width']}×{args['height']}"
    words = {
        "grayscale": "Made{of} black and white",
        "sepia": "Toned{of} sepia",
        "blur": "Blurred{of}",
        "sharpen": "Sharpened{of}",
        "border": "Added a border to{of}",
        "brightness": "Changed the brightness of{of}",
        "contrast": "Changed the contrast of{of}",
        "saturation": "Changed the colour saturation of{of}",
    }
    return words[name].format(of=of) if name in words else "Done"


def _rerun_words(plan: Plan, of: str) -> str:
    if plan.seed is None or plan.seed == -1:  # -1: a random seed, as in AUTOMATIC1111
        return f"Regenerated{of} with a new seed"
    if plan.size is not None:
        return f"Redrawn{of}"
    return f"Re-ran{of} with seed {plan.seed}"


def _all_same_pixels(source: Any, results: Sequence[Any]) -> bool:
    """Every result has exactly the source's pixels (an edit the backend could not draw)."""
    if not isinstance(source, PILImage.Image) or not results:
        return False
    from PIL import ImageChops

    reference = source.convert("RGB")
    return all(
        made.image.size == reference.size
        and ImageChops.difference(made.image.convert("RGB"), reference).getbbox() is None
        for made in results
    )


#: params that name other images by id: they describe the old step, not its replay
_ID_PARAMS = ("source_id", "replay_of", "regenerated_from")


#: what a step's record says about the request itself, whichever backend ran it
_REQUEST_PARAMS = ("operation", "width", "height", "size", "strength", "options", "steps", "guidance")


def _own_params(step: Image, *, keep_backend_params: bool = True) -> dict[str, Any]:
    """A step's params without the ids of the images around it (the source is `parent_id`).

    Replayed on another backend (`--from-root --backend offline`), the old backend's own words
    (device, dtype, scheduler, versions) would describe a run that did not happen: only the
    request's keys stay.
    """
    own = {k: v for k, v in (step.params or {}).items() if k not in _ID_PARAMS}
    return own if keep_backend_params else {k: v for k, v in own.items() if k in _REQUEST_PARAMS}


def _as_its_batch(request: ImageRequest, image: Image) -> tuple[ImageRequest, int]:
    """The request as the batch the image was made in, and the image's place in it.

    A batch's images each have their own seed, but a GPU or BLAS runs the matmuls of a batch of
    four in another order than a batch of one, so an image replayed alone can land a level off.
    Re-running the whole batch gives the same bits.
    """
    params = image.params or {}
    seeds = params.get("seeds")
    if not isinstance(seeds, list) or len(seeds) < 2 or image.seed not in seeds:
        return request, 0
    return replace(request, n=len(seeds), seed=seeds[0]), seeds.index(image.seed)


def _ms_since(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


#: Control characters other than tab and newline: terminal escapes (ESC[31m) and NULs in a
#: message would be echoed into replies, the CLI and the database.
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_LONE_SURROGATES = re.compile(r"[\ud800-\udfff]")


def clean_text(text: str) -> str:
    """User text as it is stored and planned from: no control characters, valid UTF-8.

    A lone surrogate (an undecodable byte in a CLI argument arrives as one) cannot be written
    to SQLite or a PNG text chunk; it becomes U+FFFD instead of failing the turn.
    """
    text = _LONE_SURROGATES.sub("\ufffd", text.replace("\r\n", "\n"))
    return _CONTROL_CHARACTERS.sub("", text)


def _has_visible_text(text: str) -> bool:
    """False for text that shows nothing: spaces, zero-width characters, bidi marks."""
    return any(ch.isprintable() and not ch.isspace() for ch in text)


def _unusable(attachment: Attachment, reason: str) -> str:
    what = "mask" if attachment.kind == "mask" else "image"
    return f"The uploaded {what} {_display_name(attachment.filename)!r} can't be used: {reason}"


def _display_name(filename: str, limit: int = 60) -> str:
    """An upload's name for a message: the base name only, cleaned and shortened."""
    name = clean_text(filename).replace("\\", "/").rsplit("/", 1)[-1].strip() or "upload"
    return name if len(name) <= limit else name[: limit - 1] + "…"


def _title_from(text: str) -> str:
    return one_line(text, 61) or "New conversation"
