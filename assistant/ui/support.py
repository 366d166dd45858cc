"""What the UI needs besides rendering: session keys, view models, request texts, DOT source.

Nothing here imports Streamlit, so it is unit-tested directly and the pages stay thin. The
functions turn rows the repository returns into what a page shows; they never change the
database and never decide what a turn does (that is the planner's job).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from assistant.core import BACKEND_OPERATIONS_NEEDING_SOURCE, MODEL_FREE_OPERATIONS
from assistant.one_line import one_line
from assistant.settings import Settings
from storage.models import Conversation, Image, Message
from storage.repository import ImageFilter, LineageNode


class Keys:
    """Session-state keys, in one place so pages and tests agree on them."""

    BASE_SETTINGS = "atelier.base_settings"
    CONTEXT = "atelier.context"
    CONVERSATION = "atelier.conversation_id"
    #: the lane this session's last message went into (a new chat's, before it has an id)
    LANE = "atelier.turn_lane"
    #: a request an image action queued ("three variations of #2"), sent on the next run
    PENDING = "atelier.pending_request"
    #: an image id the next turn sends as its attachment ("use as init image")
    INIT_IMAGE = "atelier.init_image_id"
    EDIT_OPEN = "atelier.edit_open"
    #: the prefix of the edit box's widget key; each opening gets a key of its own (`EDIT_BOX`)
    #: so the browser can never send text typed into the box opened for another image
    EDIT_TEXT = "atelier.edit_text"
    #: the widget key of the edit box now open, and how many times a box was opened
    EDIT_BOX = "atelier.edit_box_key"
    EDIT_GENERATION = "atelier.edit_generation"
    #: text for the edit box, set anywhere (even on another page) and moved into it before it draws
    EDIT_PREFILL = "atelier.edit_prefill"
    #: bumped after a turn so the mask uploader starts empty again
    MASK_GENERATION = "atelier.mask_generation"
    #: a one-shot message shown after the rerun that ends a turn (errors nobody recorded)
    FLASH = "atelier.flash"
    CONFIRM_DELETE = "atelier.confirm_delete"
    #: set when the open conversation turned out to be deleted (in another tab or window)
    CONVERSATION_GONE = "atelier.conversation_gone"
    #: set once a session has taken its sidebar settings from the URL (on its first run)
    SETTINGS_FROM_URL = "atelier.settings_from_url"
    GOTO_CHAT = "atelier.goto_chat"
    #: the image the history page shows in detail
    FOCUS = "atelier.focus_image_id"

    # sidebar widgets (rendered by the entry script, so their values survive page switches)
    BACKEND = "atelier.w.backend"
    OPENAI_MODEL = "atelier.w.openai_model"
    DIFFUSERS_MODEL = "atelier.w.diffusers_model"
    SIZE = "atelier.w.size"
    STEPS = "atelier.w.steps"
    GUIDANCE = "atelier.w.guidance"
    STYLE = "atelier.w.style"
    VERBATIM = "atelier.w.verbatim"
    SEED_MODE = "atelier.w.seed_mode"
    SEED = "atelier.w.seed"
    #: the sidebar's conversation search, and how many conversations it lists ("Show more")
    CONVERSATION_QUERY = "atelier.w.conversation_query"
    CONVERSATION_LIMIT = "atelier.conversation_limit"


BACKEND_LABELS: Mapping[str, str] = {
    "offline": "Built-in offline sketch renderer",
    "openai": "OpenAI Images",
    "diffusers": "Local diffusers model",
}

SIZES: tuple[str, ...] = (
    "512x512",
    "768x768",
    "1024x1024",
    "768x512",
    "512x768",
    "1024x768",
    "768x1024",
    "1536x1024",
    "1024x1536",
)

NO_STYLE = "(none)"
#: leave width and height unset: each backend makes its natural size (OpenAI rejects 512²)
BACKEND_SIZE = "Backend default"
RANDOM_SEED = "Random"
FIXED_SEED = "Fixed"

_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>#+\-.!|~$:=^&\"'@%])")


def escape_markdown(text: str) -> str:
    """User text for `st.markdown`: every markdown/HTML/LaTeX/directive character escaped.

    Streamlit markdown also understands `:red[...]`, `:material/...:` and `$math$`; a
    backslash before every ASCII punctuation character keeps all of them literal while the
    text still wraps like prose (which `st.text` would not). Newlines become hard breaks.
    """
    escaped = _MARKDOWN_SPECIAL.sub(r"\\\1", text)
    return escaped.replace("\r\n", "\n").replace("\n", "  \n")


def conversation_labels(conversations: Sequence[Conversation], width: int = 40) -> dict[int, str]:
    """Sidebar labels: the title, and where two titles are the same, when each was started
    (UTC, as the rest of the UI) and, if that is the same minute too, its number."""
    titles = [one_line(c.title, width) for c in conversations]
    labels: dict[int, str] = {}
    for conversation, title in zip(conversations, titles, strict=True):
        if titles.count(title) > 1:
            title = f"{title} · {conversation.created_at:%d %b %H:%M}"
        labels[conversation.id] = title
    repeated = list(labels.values())
    return {cid: f"{label} ({cid})" if repeated.count(label) > 1 else label for cid, label in labels.items()}


def size_label(width: int, height: int) -> str:
    return f"{width}x{height}"


def parse_size(label: str) -> tuple[int, int]:
    """'768x512' → (768, 512); raises ValueError for anything else."""
    match = re.fullmatch(r"\s*(\d+)\s*[x×]\s*(\d+)\s*", label)
    if not match:
        raise ValueError(f"not a size: {label!r}")
    return int(match.group(1)), int(match.group(2))


def default_size_option(settings: Settings) -> str:
    """The configured size, or BACKEND_SIZE when the settings leave it to the backend."""
    if settings.width and settings.height:
        return size_label(settings.width, settings.height)
    return BACKEND_SIZE


def size_options(settings: Settings) -> list[str]:
    """'Backend default', the preset sizes, and the configured size when it is not one of them."""
    current = default_size_option(settings)
    options = [BACKEND_SIZE, *SIZES]
    return options if current in options else [BACKEND_SIZE, current, *SIZES]


#: the Steps slider's top when nothing lower applies
STEPS_SLIDER_MAX = 150
#: the offline renderer's own limit (`tools.offline.MAX_STEPS`; the UI does not import `tools`,
#: so the value is repeated here and a test checks the two agree)
OFFLINE_MAX_STEPS = 100


def steps_limit(settings: Settings, backend: str) -> int:
    """The most steps the Steps slider offers for `backend`: never a value that always fails."""
    limit = min(settings.max_steps, STEPS_SLIDER_MAX)
    if backend == "offline":
        limit = min(limit, OFFLINE_MAX_STEPS)
    return max(1, limit)


def parse_conversation_param(raw: str) -> int | None:
    """The `?c=` (or `?image=`) query parameter as a row id; None for anything that is not one."""
    if not re.fullmatch(r"[0-9]{1,18}", raw.strip()):
        return None
    value = int(raw)
    return value if value > 0 else None


# ----- the sidebar's settings in the URL ---------------------------------------------------

#: session key → URL query parameter: the sidebar's settings live in the tab's URL, so a reload
#: (a new session on the same URL) keeps them without storing anything. `seed` says both the
#: mode and the value: "random", or the fixed seed. The model names are left out on purpose:
#: a URL is anyone's to write, and a link must not make the app download or load weights
#: from a place the user never typed.
SETTING_PARAMS: Mapping[str, str] = {
    Keys.BACKEND: "backend",
    Keys.SIZE: "size",
    Keys.STEPS: "steps",
    Keys.GUIDANCE: "guidance",
    Keys.STYLE: "style",
    Keys.VERBATIM: "exact",
    Keys.SEED: "seed",
}
RANDOM_SEED_PARAM = "random"
MAX_SEED_VALUE = 2**32 - 1
GUIDANCE_RANGE = (0.0, 20.0)
GUIDANCE_STEP = 0.5


def sidebar_params(values: Mapping[str, Any]) -> dict[str, str]:
    """The sidebar's values (by session key) as query parameters."""
    params: dict[str, str] = {}
    for key, name in SETTING_PARAMS.items():
        value = values.get(key)
        if key == Keys.SEED:
            fixed = values.get(Keys.SEED_MODE) == FIXED_SEED
            params[name] = str(int(value or 0)) if fixed else RANDOM_SEED_PARAM
        elif key == Keys.VERBATIM:
            params[name] = "1" if value else "0"
        elif key == Keys.GUIDANCE:
            params[name] = f"{float(value or 0.0):g}"
        else:
            params[name] = "" if value is None else str(value)
    return params


def changed_params(values: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, str]:
    """The query parameters of the settings that differ from the defaults (a clean URL otherwise)."""
    current, default = sidebar_params(values), sidebar_params(defaults)
    return {name: value for name, value in current.items() if default.get(name) != value}


def sidebar_values(
    params: Mapping[str, str], *, backends: Sequence[str], sizes: Sequence[str], styles: Sequence[str]
) -> dict[str, Any]:
    """Query parameters → the sidebar's values (by session key).

    A URL is anyone's to edit: a value that is not one the widget offers (an unknown size or
    style, steps or a seed out of range, a very long model name) is left out, so the widget
    keeps its default instead of failing.
    """
    offered: dict[str, Sequence[str]] = {Keys.BACKEND: backends, Keys.SIZE: sizes, Keys.STYLE: styles}
    values: dict[str, Any] = {}
    for key, name in SETTING_PARAMS.items():
        raw = params.get(name)
        if raw is None:
            continue
        raw = raw.strip()
        if key in offered:
            if raw in offered[key]:
                values[key] = raw
        elif key == Keys.STEPS:
            if re.fullmatch(r"[0-9]{1,4}", raw) and 1 <= int(raw) <= STEPS_SLIDER_MAX:
                values[key] = int(raw)
        elif key == Keys.GUIDANCE:
            low, high = GUIDANCE_RANGE
            if re.fullmatch(r"[0-9]{1,2}(\.[0-9]{1,3})?", raw):
                guidance = round(float(raw) / GUIDANCE_STEP) * GUIDANCE_STEP
                if low <= guidance <= high:
                    values[key] = guidance
        elif key == Keys.VERBATIM:
            if raw in ("0", "1"):
                values[key] = raw == "1"
        elif key == Keys.SEED:
            if raw == RANDOM_SEED_PARAM:
                values[Keys.SEED_MODE] = RANDOM_SEED
            elif re.fullmatch(r"[0-9]{1,10}", raw) and int(raw) <= MAX_SEED_VALUE:
                values[Keys.SEED_MODE] = FIXED_SEED
                values[Keys.SEED] = int(raw)
    return values


# ----- requests the image actions send ---------------------------------------------------


def variations_request(number: int) -> str:
    return f"three variations of #{number}"


def upscale_request(number: int) -> str:
    return f"upscale #{number} 2×"


def regenerate_request(number: int) -> str:
    return f"regenerate #{number}"


def edit_prefill(number: int) -> str:
    return f"#{number}: "


# ----- settings ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Choices:
    """What the sidebar picked; `apply` turns it into a Settings copy for the Assistant."""

    backend: str
    openai_image_model: str | None = None
    diffusers_model: str | None = None
    size: str | None = None
    steps: int | None = None
    guidance: float | None = None
    style: str | None = None
    verbatim: bool = False
    seed: int | None = None

    def apply(self, base: Settings) -> Settings:
        from assistant.settings import BackendChoice

        update: dict[str, Any] = {
            "backend": BackendChoice(self.backend),
            "verbatim": self.verbatim,
            "seed": self.seed,
            "style": None if self.style in (None, "", NO_STYLE) else self.style,
        }
        if self.openai_image_model:
            update["openai_image_model"] = self.openai_image_model.strip()
        if self.diffusers_model is not None:
            update["diffusers_model"] = self.diffusers_model.strip() or None
        if self.size == BACKEND_SIZE:
            update["width"] = update["height"] = None
        elif self.size:
            update["width"], update["height"] = parse_size(self.size)
        if self.steps is not None:
            update["steps"] = int(self.steps)
        if self.guidance is not None:
            update["guidance"] = float(self.guidance)
        return base.model_copy(update=update)


def backend_cache_key(settings: Settings) -> str:
    """What decides which backend object serves a turn: equal keys may share a loaded model.

    The API key enters only as a hash, so the key (which Streamlit keeps in memory as the
    cache key) never holds the secret.
    """
    secret = settings.openai_api_key.get_secret_value() if settings.openai_api_key else ""
    backend = settings.effective_backend.value
    parts: dict[str, Any] = {"backend": backend}
    if backend == "openai":
        parts |= {
            "model": settings.openai_image_model,
            "base_url": settings.openai_base_url,
            "timeout": settings.openai_timeout,
            "retries": settings.openai_max_retries,
            "key": hashlib.sha256(secret.encode()).hexdigest()[:16],
        }
    elif backend == "diffusers":
        parts |= {
            "model": settings.diffusers_model,
            "device": settings.diffusers_device,
            "compile": settings.diffusers_compile,
            "offload": settings.diffusers_offload,
            "cache": str(settings.data_dir / "cache"),
        }
    return json.dumps(parts, sort_keys=True)


# ----- view models -------------------------------------------------------------------------


#: images a re-roll can't redo, as the assistant decides (`Assistant._regenerate`): an upload
#: has no request behind it, an upscale or a transform no model and no seed
NOT_REGENERABLE = frozenset({"upload", *MODEL_FREE_OPERATIONS})
#: backend operations that re-run on their parent: with the parent gone there is nothing to redo
NEEDS_PARENT = frozenset(str(operation) for operation in BACKEND_OPERATIONS_NEEDING_SOURCE)


def can_regenerate(operation: str, parent_id: int | None) -> bool:
    """Whether "regenerate #N" can do anything for this image (else it only says why not)."""
    if operation in NOT_REGENERABLE:
        return False
    return not (operation in NEEDS_PARENT and parent_id is None)


@dataclass(frozen=True)
class ImageView:
    id: int
    number: int
    conversation_id: int
    operation: str
    path: Path
    parent_label: str | None
    sha256: str
    parent_id: int | None = None
    #: what a screen reader says for the picture (`alt_text`)
    alt: str = ""
    width: int = 0
    height: int = 0
    seed: int | None = None
    #: "#1" when this image is a re-roll of it: a re-roll of a picture drawn from a prompt has
    #: no parent, and "#10 · generate" alone would not say where it came from
    rerolled_from: str | None = None
    #: "30 steps · CFG 7.5 · Euler a": what the backend reports it used (none for a transform)
    sampling: str = ""
    #: the style preset it was drawn in: "#3 in 4 styles" gives four edits of #3, told apart by it
    style: str | None = None

    @property
    def caption(self) -> str:
        origin = f" · from {self.parent_label}" if self.parent_label else ""
        again = f" · re-roll of {self.rerolled_from}" if self.rerolled_from else ""
        style = f" · {self.style}" if self.style else ""
        return f"#{self.number} · {self.operation}{origin}{again}{style}"

    @property
    def settings_line(self) -> str:
        """How to make it again, under the caption: AUTOMATIC1111 users look for the seed first."""
        seed = f"seed {self.seed} · " if self.seed is not None else ""
        sampling = f" · {self.sampling}" if self.sampling else ""
        return f"{seed}{self.width}×{self.height}{sampling}"

    def can_upscale(self, factor: int, max_side: int) -> bool:
        """Whether the upscale button could work: one over the side limit could only fail."""
        return max(self.width, self.height) * factor <= max_side

    @property
    def can_regenerate(self) -> bool:
        return can_regenerate(self.operation, self.parent_id)


@dataclass(frozen=True)
class MessageView:
    id: int | None
    role: str
    text: str
    failed: bool = False
    #: stopped by the user: shown as a notice, not as an error
    cancelled: bool = False
    plan: Mapping[str, Any] | None = None
    images: list[ImageView] = field(default_factory=list)
    #: a user message no reply was stored for (Atelier stopped mid-turn); `last`: nothing after it
    unanswered: bool = False
    last: bool = False
    #: for "show me how #4 came about": each asked-about image's chain, root first, to draw small
    chains: list[list[ImageView]] = field(default_factory=list)


def parent_label(image: Image, numbers: Mapping[int, int]) -> str | None:
    """'#2' for a parent in the same conversation, 'image 17' for one elsewhere."""
    if image.parent_id is None:
        return None
    number = numbers.get(image.parent_id)
    return f"#{number}" if number is not None else f"image {image.parent_id}"


def image_view(image: Image, path: Path, numbers: Mapping[int, int]) -> ImageView:
    return ImageView(
        id=image.id,
        number=image.number,
        conversation_id=image.conversation_id,
        operation=image.operation,
        path=path,
        parent_label=parent_label(image, numbers),
        sha256=image.sha256,
        parent_id=image.parent_id,
        alt=alt_text(image),
        width=image.width,
        height=image.height,
        seed=image.seed,
        rerolled_from=_rerolled_from(image, numbers),
        sampling=sampling_words(image.params or {}),
        style=style if isinstance(style := (image.params or {}).get("style"), str) and style else None,
    )


def sampling_words(params: Mapping[str, Any]) -> str:
    """ "30 steps · CFG 7.5 · Euler a" from an image's own params, the A1111 settings after the
    seed; a setting its backend did not use (OpenAI has no steps) is not there to show."""
    parts: list[str] = []
    steps = params.get("steps")
    if isinstance(steps, int) and not isinstance(steps, bool):
        parts.append(f"{steps} steps")
    guidance = params.get("guidance")
    if isinstance(guidance, int | float) and not isinstance(guidance, bool):
        parts.append(f"CFG {guidance:g}")
    sampler = params.get("sampler") or params.get("scheduler")
    if isinstance(sampler, str) and sampler.strip():
        parts.append(one_line(sampler, 24))
    return " · ".join(parts)


def _rerolled_from(image: Image, numbers: Mapping[int, int]) -> str | None:
    target = (image.params or {}).get("regenerated_from")
    if not isinstance(target, int) or isinstance(target, bool):
        return None
    number = numbers.get(target)
    return f"#{number}" if number is not None else f"image {target}"


def alt_text(image: Image) -> str:
    """The picture in words for a screen reader: its number, what made it and what it shows.

    The caption under a thumbnail says "#3 · edit"; that is not the picture. The prompt it was
    drawn from is the nearest description Atelier has ("three more like the second one", the
    request, says nothing of it); an upload is the user's own picture, described by its file's
    prompt when it has one.
    """
    if image.operation == "upload":
        words = one_line(image.prompt, 150)
        return f"Image #{image.number}, your upload" + (f": {words}" if words else "")
    words = one_line(image.prompt or image.instruction, 150)
    return f"Image #{image.number}, {image.operation}" + (f": {words}" if words else "")


def conversation_view(
    messages: Sequence[Message], images: Sequence[Image], image_path: Callable[[Image], Path]
) -> list[MessageView]:
    """Messages oldest first, each reply after the message it answers (`answer_order`), each
    with the images stored under it.

    Images whose message is gone (or that were stored without one) are shown at the end in
    an assistant message of their own, so no stored image is ever hidden from the chat.
    """
    numbers = {image.id: image.number for image in images}
    by_message: dict[int | None, list[ImageView]] = {}
    every: dict[int, ImageView] = {}
    for image in images:
        view = every[image.id] = image_view(image, image_path(image), numbers)
        by_message.setdefault(image.message_id, []).append(view)
    views: list[MessageView] = []
    known: set[int] = set()
    for message in answer_order(messages):
        known.add(message.id)
        views.append(
            MessageView(
                id=message.id,
                role=message.role if message.role in ("user", "assistant") else "assistant",
                text=message.content,
                failed=message.status == "failed",
                cancelled=message.status == "cancelled",
                plan=message.plan,
                images=by_message.get(message.id, []),
                chains=lineage_chains(message.plan, every),
            )
        )
    views = _mark_unanswered(views, messages)
    loose = [view for key, group in by_message.items() if key not in known for view in group]
    if loose:
        views.append(
            MessageView(id=None, role="assistant", text="", images=sorted(loose, key=lambda v: v.number))
        )
    return views


#: the most steps of a chain drawn under a lineage answer (the newest); the rest are in History
CHAIN_SHOWN = 6


def lineage_chains(plan: Mapping[str, Any] | None, images: Mapping[int, ImageView]) -> list[list[ImageView]]:
    """The chains a lineage answer talks about ("how did #4 come about?"), root first.

    The answer's words list the steps; pictures of them say it at a glance. Parents outside
    the conversation (an image imported from elsewhere) end the chain.
    """
    if not plan or plan.get("intent") != "describe" or plan.get("question_kind") != "lineage":
        return []
    by_number = {view.number: view for view in images.values()}
    chains: list[list[ImageView]] = []
    for number in plan.get("targets") or []:
        view = by_number.get(number) if isinstance(number, int) else None
        chain: list[ImageView] = []
        while view is not None and view not in chain:
            chain.insert(0, view)
            view = images.get(view.parent_id) if view.parent_id is not None else None
        if chain:
            chains.append(chain[-CHAIN_SHOWN:])
    return chains


def _mark_unanswered(views: list[MessageView], messages: Sequence[Message]) -> list[MessageView]:
    """Flag user messages with no reply under them, as drawn and as stored.

    A turn whose process died (a server restart, a kill) leaves its message and nothing else;
    without a word under it the chat looks as if it were still thinking. Both orders must agree:
    "try again" after such a message gets a reply drawn under the retried words (so "try again"
    itself is answered as stored), and a turn cancelled by the next message is answered as
    drawn. The page draws the running turn's rows itself, so a turn in progress is not flagged.
    """
    stored_unanswered = {
        message.id
        for index, message in enumerate(messages)
        if message.role == "user" and (index + 1 == len(messages) or messages[index + 1].role == "user")
    }
    marked: list[MessageView] = []
    for index, view in enumerate(views):
        following = views[index + 1] if index + 1 < len(views) else None
        drawn_unanswered = following is None or following.role == "user"
        if view.role == "user" and drawn_unanswered and view.id in stored_unanswered:
            view = replace(view, unanswered=True, last=following is None)
        marked.append(view)
    return marked


def _answers(reply: Message) -> str | None:
    """The user's words a reply's stored plan says it answers (`plan.instruction`), if any."""
    plan = reply.plan if isinstance(reply.plan, Mapping) else {}
    instruction = plan.get("instruction")
    return instruction.strip() if isinstance(instruction, str) and instruction.strip() else None


def _place_replies(users: Sequence[Message], replies: Sequence[Message]) -> list[Message]:
    """One burst (user messages sent one after another, then the replies that followed), with
    each reply moved after the user message whose words its plan records.

    A turn interrupted by the next message (or by a reload) records its cancelled reply after
    that next message was stored; so when several words match, a cancelled or failed reply
    takes the oldest unanswered one (the interrupted turn came first) and a finished reply
    the newest. A reply whose plan names no words stays after the last user message.
    """
    if len(users) <= 1:
        return [*users, *replies]
    placed: dict[int, list[Message]] = {index: [] for index in range(len(users))}
    answered: set[int] = set()
    for reply in replies:
        words = _answers(reply)
        matches = [i for i, user in enumerate(users) if words is not None and user.content.strip() == words]
        unanswered = [i for i in matches if i not in answered]
        candidates = unanswered or matches
        if not candidates:
            index = len(users) - 1
        elif reply.status in ("cancelled", "failed"):
            index = candidates[0]
        else:
            index = candidates[-1]
        answered.add(index)
        placed[index].append(reply)
    return [message for index, user in enumerate(users) for message in (user, *placed[index])]


def answer_order(messages: Sequence[Message]) -> list[Message]:
    """Messages oldest first, except that a reply is drawn right after the user message it
    answers, as far as the stored plans tell (see `_place_replies`).

    Storage order is kept within what can't be told apart; only replies recorded after a
    later user message move (a turn cancelled by the next message, or one that finished
    after the user sent another from a reloaded tab).
    """
    ordered: list[Message] = []
    users: list[Message] = []
    replies: list[Message] = []
    for message in messages:
        if message.role == "user":
            if replies:  # a user message after replies starts the next burst
                ordered += _place_replies(users, replies)
                users, replies = [], []
            users.append(message)
        else:
            replies.append(message)
    ordered += _place_replies(users, replies)
    return ordered


def plan_rows(plan: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The parts of a plan (PlanMade or a stored `messages.plan`) worth showing, as label/value."""
    rows: list[tuple[str, str]] = []
    labels = (
        ("intent", "Intent"),
        ("operation", "Operation"),
        ("targets", "Works on"),
        ("prompt", "Prompt"),
        ("negative_prompt", "Negative prompt"),
        ("style", "Style"),
        ("n", "Images"),
        ("strength", "Strength"),
        ("seed", "Seed"),
        ("transform", "Transform"),
        ("backend", "Backend"),
        ("model", "Model"),
        ("planner", "Planner"),
        ("error", "Error"),
    )
    for key, label in labels:
        value = plan.get(key)
        if key == "negative_prompt" and plan.get("prompt") and not value:
            value = "(none)"  # say so: the backend got no negative prompt
        if value in (None, "", [], {}):
            continue
        if key == "targets":
            value = ", ".join(f"#{n}" for n in value)
        rows.append((label, str(value)))
    params = plan.get("params")
    if isinstance(params, Mapping):
        for key, value in params.items():
            if value not in (None, ""):
                rows.append((key, json.dumps(value) if isinstance(value, dict | list) else str(value)))
    for note in plan.get("notes") or ():
        rows.append(("Note", str(note)))
    return rows


def image_fields(image: Image, conversation_title: str, numbers: Mapping[int, int]) -> list[tuple[str, str]]:
    """Everything recorded about an image, for the detail view (params come separately)."""
    rows = [
        ("Image", f"#{image.number} (id {image.id})"),
        ("Conversation", f"{conversation_title} (id {image.conversation_id})"),
        ("Operation", image.operation),
        ("Derived from", parent_label(image, numbers) or "—"),
        ("Backend", image.backend),
        ("Model", image.model or "—"),
        ("Seed", "—" if image.seed is None else str(image.seed)),
        ("Size", size_label(image.width, image.height)),
        ("Created (UTC)", image.created_at.strftime("%Y-%m-%d %H:%M:%S")),
        ("SHA-256", image.sha256[:16] + "…"),
    ]
    return rows


def gallery_filter(
    *,
    query: str = "",
    backend: str | None = None,
    operation: str | None = None,
    conversation_id: int | None = None,
    since: date | None = None,
    until: date | None = None,
) -> ImageFilter:
    """Form values → the repository filter; `until` is inclusive of that whole day."""
    return ImageFilter(
        conversation_id=conversation_id,
        backend=backend or None,
        operation=operation or None,
        since=datetime.combine(since, datetime.min.time()) if since else None,
        until=datetime.combine(until + timedelta(days=1), datetime.min.time()) if until else None,
        query=query.strip() or None,
    )


# ----- lineage as DOT ------------------------------------------------------------------------


def dot_string(text: str) -> str:
    """A DOT double-quoted string: backslashes, quotes and line breaks can't end or alter it."""
    cleaned = text.replace("\\", "\\\\").replace('"', '\\"')
    cleaned = cleaned.replace("\r", "").replace("\n", "\\n")
    return f'"{cleaned}"'


#: more images than this at one depth of a lineage tree and it is drawn left to right
WIDE_LINEAGE = 4


def lineage_dot(nodes: Iterable[LineageNode], highlight_id: int | None = None) -> str:
    """The lineage tree as Graphviz DOT; the highlighted image is filled and bold.

    Labels are user text (instructions), so each goes through `dot_string`; node names are
    built from integer ids only.
    """
    rows = list(nodes)
    conversations = {node.image.conversation_id for node in rows}
    per_depth = [node.depth for node in rows]
    # a wide generation (eight variations of one image) side by side is shrunk to fit the page
    # until no label can be read; left to right, siblings stack down the page instead
    wide = max((per_depth.count(depth) for depth in set(per_depth)), default=0) > WIDE_LINEAGE
    lines = [
        "digraph lineage {",
        f"  rankdir={'LR' if wide else 'TB'};",
        '  node [shape=box, style="rounded,filled", fillcolor="#f4f4f5", color="#a1a1aa", '
        'fontname="Helvetica", fontsize=11];',
        '  edge [color="#71717a", fontname="Helvetica", fontsize=9];',
    ]
    present = {node.image.id for node in rows}
    for node in rows:
        image = node.image
        where = f" (conversation {image.conversation_id})" if len(conversations) > 1 else ""
        words = one_line(image.instruction or image.prompt, 28 if wide else 40)
        label = f"#{image.number} {image.operation}{where}\n{words}"
        attributes = [f"label={dot_string(label)}", f"tooltip={dot_string(f'image id {image.id}')}"]
        if image.id == highlight_id:
            attributes += [
                'fillcolor="#fde68a"',
                'color="#b45309"',
                "penwidth=2",
                'fontname="Helvetica-Bold"',
            ]
        lines.append(f"  img{int(image.id)} [{', '.join(attributes)}];")
    for node in rows:
        image = node.image
        if image.parent_id is not None and image.parent_id in present:
            lines.append(
                f"  img{int(image.parent_id)} -> img{int(image.id)} [label={dot_string(image.operation)}];"
            )
    lines.append("}")
    return "\n".join(lines)
