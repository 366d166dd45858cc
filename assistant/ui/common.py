"""What every page shares: settings, the cached repository and backend, the sidebar, flashes.

Heavy things are built once per process with `st.cache_resource` (the repository and its
engine, each backend: a diffusers pipeline loads once), keyed by what makes them differ;
per-user things (the base Settings, the chosen conversation, the sidebar choices) live in
`st.session_state`. The entry script renders the sidebar before the page runs, which is what
keeps its widget values when the user moves between pages.
"""

from __future__ import annotations

import io
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import streamlit as st
from PIL import Image as PILImage
from pydantic import SecretStr, ValidationError
from streamlit.runtime.media_file_storage import MediaFileStorageError

from assistant.core import Assistant
from assistant.settings import BackendChoice, Settings, describe_settings_error
from assistant.turn_lanes import TurnLanes
from assistant.ui import support
from assistant.ui.support import Keys, escape_markdown
from storage.archive import export_conversation_bytes
from storage.db import StorageError
from storage.models import Conversation
from storage.repository import NotFound, Repository

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UiContext:
    """What a page needs: the settings this run uses and the repository."""

    base: Settings
    settings: Settings
    repo: Repository


# ----- construction -------------------------------------------------------------------------


def base_settings() -> Settings:
    """Settings from the environment, read once per browser session (not per rerun).

    Per session rather than per process so a changed environment (and each test's
    ATELIER_DATA_DIR) is honoured by the next session without restarting the server.
    """
    settings = st.session_state.get(Keys.BASE_SETTINGS)
    if isinstance(settings, Settings):
        return settings
    try:
        settings = Settings()
    except ValidationError as exc:  # named setting, allowed values; never pydantic's input dump
        st.error(f"Atelier's settings are invalid: {describe_settings_error(exc)}")
        st.stop()
    problems = settings.limit_problems()
    if problems:  # every turn would be refused: say it once, before anything is stored
        st.error(f"Atelier's settings are invalid: {' '.join(problems)}")
        st.stop()
    settings = with_streamlit_secrets(settings)
    st.session_state[Keys.BASE_SETTINGS] = settings
    return settings


#: Streamlit secret names (`.streamlit/secrets.toml`) → settings fields; the environment wins.
SECRET_SETTINGS = {"OPENAI_API_KEY": "openai_api_key", "ATELIER_CHAT_API_KEY": "chat_api_key"}


def with_streamlit_secrets(settings: Settings) -> Settings:
    """Keys may come from Streamlit secrets as well as the environment (never from the UI)."""
    try:
        available = {name: st.secrets[name] for name in SECRET_SETTINGS if name in st.secrets}
    except Exception:  # no secrets.toml at all: Streamlit raises rather than returning empty
        return settings
    updates = {
        field: SecretStr(str(available[name]))
        for name, field in SECRET_SETTINGS.items()
        if name in available and getattr(settings, field) is None and str(available[name]).strip()
    }
    return settings.model_copy(update=updates) if updates else settings


@st.cache_resource(show_spinner=False)
def _repository(database_url: str, images_dir: str, _settings: Settings) -> Repository:
    """One repository (engine + migrations + sweep) per database for the whole server."""
    from assistant.runtime import open_repository

    return open_repository(_settings)


def repository(settings: Settings) -> Repository:
    try:
        return _repository(settings.effective_database_url, str(settings.images_dir), settings)
    except StorageError as exc:
        st.error(f"Atelier can't open its data: {exc}")
        st.stop()


@st.cache_resource(show_spinner="Loading the image backend…", max_entries=4)
def _backend(key: str, _settings: Settings) -> Any:
    """One light backend (offline, OpenAI) per configuration: clients are cheap, keep a few."""
    from assistant.backends import make_backend

    return make_backend(_settings)


class HeavySlot:
    """The one heavy (local diffusers) backend the server holds, and its configuration key.

    A diffusers model takes gigabytes of RAM or GPU memory, so the server keeps at most one:
    asking for another configuration first lets go of the held backend and frees its weights,
    then builds the new one. Sessions that want different local models therefore take turns
    loading them, which is slow but never runs out of memory. A turn still running on the old
    model keeps its own reference and finishes; the memory goes back when it does.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.key: str | None = None
        self.backend: Any = None

    def get(self, key: str, settings: Settings) -> Any:
        with self.lock:
            if self.key == key and self.backend is not None:
                return self.backend
            self.release()
            from assistant.backends import make_backend

            self.backend = make_backend(settings)
            self.key = key
            return self.backend

    def release(self) -> None:
        """Drop the held backend and give its model's memory back."""
        held, self.backend, self.key = self.backend, None, None
        if held is not None:
            del held  # the last reference this process keeps, before the weights go
            unload_local_models()


def unload_local_models() -> None:
    """Free the weights of the local model this process loaded (see `release_local_models`)."""
    from assistant.backends import release_local_models

    release_local_models()


def _release_slot(slot: HeavySlot) -> None:
    with slot.lock:
        slot.release()


@st.cache_resource(show_spinner=False, on_release=_release_slot)
def heavy_slot() -> HeavySlot:
    """The server's one heavy-backend slot (a cached resource, so it outlives module reloads;
    clearing Streamlit's resource cache frees the model too)."""
    return HeavySlot()


def backend_for(settings: Settings) -> Any:
    """The shared backend for `settings`: light ones cached per configuration, a local model alone."""
    key = support.backend_cache_key(settings)
    if settings.effective_backend is BackendChoice.DIFFUSERS:
        slot = heavy_slot()
        if slot.key == key:  # the usual case: no spinner flashing on every turn
            return slot.get(key, settings)
        with st.spinner("Switching the local model…" if slot.key else "Preparing the local model…"):
            return slot.get(key, settings)
    return _backend(key, settings)


def clear_backends() -> None:
    """Forget every cached backend and free a loaded local model (tests, a settings reset)."""
    _backend.clear()
    _release_slot(heavy_slot())


@st.cache_resource(show_spinner=False)
def turn_lanes() -> TurnLanes:
    """The server's running turns (a cached resource: a page rerun or a reload finds them)."""
    return TurnLanes()


def make_assistant(settings: Settings, repo: Repository) -> Assistant:
    """A fresh Assistant per turn around the shared backend.

    The Assistant itself is cheap and holds per-turn state (its cancel token), so sessions
    must not share one; the backend is the expensive part and is shared. When the backend
    cannot be built, the Assistant is left to build it itself, which turns the error into a
    recorded, user-facing failure of the turn.
    """
    try:
        backend = backend_for(settings)
    except Exception:
        log.info("backend construction failed; the turn will report it", exc_info=True)
        backend = None
    return Assistant(settings, repo, backend=backend)


def context() -> UiContext:
    """The context the entry script stored for this run (pages are scripts, not functions)."""
    ctx = st.session_state.get(Keys.CONTEXT)
    if not isinstance(ctx, UiContext):
        base = base_settings()
        ctx = UiContext(base, base, repository(base))
    return ctx


#: the longest side of the images the chat and the gallery show; the full file is for the
#: detail view and the download
THUMBNAIL_SIDE = 384


@st.cache_data(max_entries=2000, show_spinner=False)
def thumbnail(sha256: str, path: str, side: int = THUMBNAIL_SIDE) -> bytes:
    """A small PNG of a stored image, made once per image and size.

    Keyed by the content hash (the path is derived from it), so it can never be stale; the
    full-size file is read only here, on a cache miss, not on every rerun.
    """
    with PILImage.open(path) as opened:
        image = opened.convert("RGBA" if "A" in opened.getbands() else "RGB")
    image.thumbnail((side, side))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


MISSING_FILE = "The file of this image is missing; `atelier doctor` checks the store."


def _missing_file() -> None:
    st.warning(MISSING_FILE, icon=":material/broken_image:")


def show_image(path: Path | str, **kwargs: Any) -> bool:
    """`st.image` of a stored file at full size (the detail view), or a warning when it is gone."""
    try:
        st.image(str(path), **kwargs)
    except (MediaFileStorageError, OSError):
        _missing_file()
        return False
    return True


def show_thumbnail(sha256: str, path: Path | str, side: int = THUMBNAIL_SIDE, **kwargs: Any) -> bool:
    """`st.image` of the cached thumbnail, or a warning when the file is gone.

    The file is checked (one stat) before the cache is asked, so a deleted file warns even
    though its thumbnail is still cached. PNG in, PNG out: Streamlit passes it through
    instead of re-encoding it on every rerun.
    """
    if not os.path.isfile(path):
        _missing_file()
        return False
    try:
        data = thumbnail(sha256, str(path), side)
        st.image(data, output_format="PNG", **kwargs)
    except (MediaFileStorageError, OSError):
        _missing_file()
        return False
    return True


# ----- flashes ------------------------------------------------------------------------------


def flash(message: str, kind: str = "error") -> None:
    """Show `message` once at the top of the next run (for things no row records)."""
    st.session_state.setdefault(Keys.FLASH, []).append((kind, message))


def show_flashes() -> None:
    for kind, message in st.session_state.pop(Keys.FLASH, []):
        text = escape_markdown(message)
        if kind == "error":
            st.error(text)
        elif kind == "success":
            st.success(text)
        elif kind == "warning":
            st.warning(text)
        else:
            st.info(text)


# ----- conversations ----------------------------------------------------------------------------


#: the URL query parameter that names the open conversation (`?c=12`), so a reload keeps it
CONVERSATION_PARAM = "c"


def _conversation_in_url(repo: Repository) -> int | None:
    """The conversation the URL names, if it is one that exists; a bad link just starts fresh."""
    raw = st.query_params.get(CONVERSATION_PARAM)
    if raw is None:
        return None
    conversation_id = support.parse_conversation_param(raw)
    if conversation_id is not None:
        try:
            return repo.get_conversation(conversation_id).id
        except NotFound:
            pass
    flash("The conversation in the link no longer exists; describe a picture to start a new one.", "info")
    return None


def _show_in_url(conversation_id: int | None) -> None:
    wanted = None if conversation_id is None else str(conversation_id)
    if st.query_params.get(CONVERSATION_PARAM) == wanted:
        return
    if wanted is None:
        del st.query_params[CONVERSATION_PARAM]
    else:
        st.query_params[CONVERSATION_PARAM] = wanted


def current_conversation(repo: Repository) -> Conversation | None:
    """The selected conversation, or None (a new one starts with the next message).

    A new browser session (a reload, a shared link) starts on the conversation in the URL;
    after that the session's choice wins and the URL follows it.
    """
    if Keys.CONVERSATION not in st.session_state:
        st.session_state[Keys.CONVERSATION] = _conversation_in_url(repo)
    conversation_id = st.session_state.get(Keys.CONVERSATION)
    conversation: Conversation | None = None
    if conversation_id is not None:
        try:
            conversation = repo.get_conversation(int(conversation_id))
        except NotFound:  # deleted in another tab: the chat page says so (`Keys.CONVERSATION_GONE`)
            st.session_state[Keys.CONVERSATION] = None
            st.session_state[Keys.CONVERSATION_GONE] = True
            st.session_state[Keys.INIT_IMAGE] = None
            st.session_state[Keys.EDIT_OPEN] = False
    _show_in_url(conversation.id if conversation else None)
    return conversation


def show_new_conversation(conversation_id: int) -> None:
    """The first turn of a new chat has created its conversation: name it in the URL at once,
    so a reload during that turn opens it (and watches the turn) instead of an empty page."""
    if st.session_state.get(Keys.CONVERSATION) is None:
        st.session_state[Keys.CONVERSATION] = conversation_id
        _show_in_url(conversation_id)


def select_conversation(conversation_id: int | None, goto_chat: bool = True) -> None:
    st.session_state[Keys.CONVERSATION] = conversation_id
    st.session_state.pop(Keys.LANE, None)  # the page stops following a new chat's first turn
    _show_in_url(conversation_id)
    st.session_state[Keys.CONFIRM_DELETE] = None
    st.session_state[Keys.INIT_IMAGE] = None
    st.session_state[Keys.EDIT_OPEN] = False
    if goto_chat:
        st.session_state[Keys.GOTO_CHAT] = True


def _rename(repo: Repository, conversation_id: int, key: str) -> None:
    title = str(st.session_state.get(key) or "").strip()
    if not title:
        flash("A conversation needs a title.")
        return
    try:
        repo.rename_conversation(conversation_id, title)
    except StorageError as exc:
        flash(str(exc))


def _ask_delete(conversation_id: int) -> None:
    st.session_state[Keys.CONFIRM_DELETE] = conversation_id


def _cancel_delete() -> None:
    st.session_state[Keys.CONFIRM_DELETE] = None


def _delete(repo: Repository, conversation_id: int) -> None:
    try:
        repo.delete_conversation(conversation_id)
    except StorageError as exc:
        flash(str(exc))
    else:
        flash("Conversation deleted.", "success")
    st.session_state[Keys.CONFIRM_DELETE] = None
    if st.session_state.get(Keys.CONVERSATION) == conversation_id:
        st.session_state[Keys.CONVERSATION] = None


#: conversations the sidebar lists at first, and how many more each "Show more" adds
CONVERSATIONS_PAGE = 100
#: above this many, the list scrolls in a box of its own and the search box appears
CONVERSATIONS_IN_VIEW = 8


def _more_conversations() -> None:
    shown = int(st.session_state.get(Keys.CONVERSATION_LIMIT, CONVERSATIONS_PAGE))
    st.session_state[Keys.CONVERSATION_LIMIT] = shown + CONVERSATIONS_PAGE


def _new_search() -> None:
    st.session_state[Keys.CONVERSATION_LIMIT] = CONVERSATIONS_PAGE


def _sidebar_conversations(repo: Repository) -> None:
    sidebar = st.sidebar
    sidebar.subheader("Conversations")
    sidebar.button(
        "New conversation",
        key="atelier.new_conversation",
        icon=":material/add:",
        on_click=select_conversation,
        args=(None,),
        width="stretch",
    )
    current = st.session_state.get(Keys.CONVERSATION)
    query = str(st.session_state.get(Keys.CONVERSATION_QUERY) or "")
    limit = int(st.session_state.get(Keys.CONVERSATION_LIMIT, CONVERSATIONS_PAGE))
    conversations = repo.list_conversations(limit=limit + 1, query=query)
    more = len(conversations) > limit
    conversations = conversations[:limit]
    selected = next((c for c in conversations if c.id == current), None)
    if selected is None and current is not None:
        try:
            selected = repo.get_conversation(int(current))
        except NotFound:
            selected = None
        if selected is not None and not query.strip():
            conversations.insert(0, selected)  # an older one opened by a link: still listed
    if query or more or len(conversations) > CONVERSATIONS_IN_VIEW:
        sidebar.text_input(
            "Find a conversation",
            key=Keys.CONVERSATION_QUERY,
            placeholder="words from its title or messages",
            on_change=_new_search,
            icon=":material/search:",
        )
    with sidebar.container(
        height=300 if len(conversations) > CONVERSATIONS_IN_VIEW else "content", border=False
    ):
        labels = support.conversation_labels(conversations)
        for conversation in conversations:
            st.button(
                escape_markdown(labels[conversation.id]),
                key=f"atelier.conversation.{conversation.id}",
                type="primary" if conversation.id == current else "secondary",
                on_click=select_conversation,
                args=(conversation.id,),
                width="stretch",
            )
        if query.strip() and not conversations:
            st.caption("No conversation matches.")
        if more:
            st.button(
                "Show older conversations",
                key="atelier.conversations_more",
                icon=":material/expand_more:",
                on_click=_more_conversations,
                width="stretch",
            )
    if selected is None:
        return
    if repo.conversation_images(selected.id):
        sidebar.download_button(
            "Export conversation (zip)",
            # made on the click, not on every rerun: the zip holds every image file
            data=lambda: export_conversation_bytes(repo, selected.id),
            file_name=f"atelier-conversation-{selected.id}.zip",
            mime="application/zip",
            key=f"atelier.export.{selected.id}",
            on_click="ignore",
            icon=":material/download:",
            width="stretch",
            help="Images, messages and lineage; `atelier import` reads it back.",
        )
    with sidebar.expander("Rename or delete this conversation"):
        rename_key = f"atelier.rename.{selected.id}"
        st.text_input("Title", value=selected.title, key=rename_key, max_chars=120)
        st.button(
            "Rename",
            key=f"atelier.rename_button.{selected.id}",
            on_click=_rename,
            args=(repo, selected.id, rename_key),
        )
        if st.session_state.get(Keys.CONFIRM_DELETE) == selected.id:
            count = len(repo.conversation_images(selected.id))
            st.warning(f"Delete this conversation and its {count} image(s)? This cannot be undone.")
            st.button(
                "Yes, delete it",
                key="atelier.delete_confirm",
                type="primary",
                on_click=_delete,
                args=(repo, selected.id),
            )
            st.button("Keep it", key="atelier.delete_cancel", on_click=_cancel_delete)
        else:
            st.button(
                "Delete…",
                key=f"atelier.delete.{selected.id}",
                icon=":material/delete:",
                on_click=_ask_delete,
                args=(selected.id,),
            )


# ----- model and image settings ------------------------------------------------------------------


def _style_names() -> list[str]:
    try:
        from assistant.rewrite import STYLE_PRESETS
    except ImportError:  # the rewrite module is optional for the UI
        return []
    return sorted(STYLE_PRESETS)


def _remember(key: str, default: Any) -> None:
    """Keep a widget's value on runs that don't draw it (the model box while another backend is
    picked, the seed while it is random): Streamlit forgets an undrawn widget's value, and the
    user would find what they typed replaced by the default. The widget then takes its value
    from the session state alone (no `value=`, which would conflict with it)."""
    st.session_state[key] = st.session_state.get(key, default)


BACKEND_OPTIONS = [
    choice.value for choice in (BackendChoice.OFFLINE, BackendChoice.OPENAI, BackendChoice.DIFFUSERS)
]


def _style_options(base: Settings) -> list[str]:
    styles = [support.NO_STYLE, *_style_names()]
    if base.style and base.style not in styles:
        styles.append(base.style)
    return styles


def _setting_defaults(base: Settings) -> dict[str, Any]:
    """What each sidebar widget starts at, from the settings the server was started with."""
    return {
        Keys.BACKEND: base.effective_backend.value,
        Keys.OPENAI_MODEL: base.openai_image_model,
        Keys.DIFFUSERS_MODEL: base.diffusers_model or "",
        Keys.SIZE: support.default_size_option(base),
        Keys.STEPS: max(1, min(base.steps, support.STEPS_SLIDER_MAX)),
        Keys.GUIDANCE: float(base.guidance),
        Keys.STYLE: base.style or support.NO_STYLE,
        Keys.VERBATIM: bool(base.verbatim),
        Keys.SEED_MODE: support.FIXED_SEED if base.seed is not None else support.RANDOM_SEED,
        Keys.SEED: int(base.seed or 0),
    }


def _settings_from_url(base: Settings) -> None:
    """A new session (a reload, a shared link) starts from the settings its URL carries."""
    if st.session_state.get(Keys.SETTINGS_FROM_URL):
        return
    st.session_state[Keys.SETTINGS_FROM_URL] = True
    params = {name: st.query_params.get(name) for name in support.SETTING_PARAMS.values()}
    values = support.sidebar_values(
        {name: value for name, value in params.items() if value is not None},
        backends=BACKEND_OPTIONS,
        sizes=support.size_options(base),
        styles=_style_options(base),
    )
    for key, value in values.items():
        st.session_state.setdefault(key, value)


def _settings_to_url(base: Settings) -> None:
    """Keep the URL saying what the sidebar says (only the settings changed from the defaults)."""
    current = {key: st.session_state.get(key) for key in _setting_defaults(base)}
    changed = support.changed_params(current, _setting_defaults(base))
    for name in support.SETTING_PARAMS.values():
        wanted = changed.get(name)
        if st.query_params.get(name) == wanted:
            continue
        if wanted is None:
            del st.query_params[name]
        else:
            st.query_params[name] = wanted


def _sidebar_settings(base: Settings) -> support.Choices:
    """The model and image settings. Every widget takes its value from the session state alone
    (set from the URL on a session's first run, else the defaults), and the URL follows them,
    so a reload keeps what the user picked."""
    sidebar = st.sidebar
    _settings_from_url(base)
    for key, default in _setting_defaults(base).items():
        _remember(key, default)
    sidebar.subheader("Model")
    backend = sidebar.selectbox(
        "Image backend",
        BACKEND_OPTIONS,
        format_func=lambda value: support.BACKEND_LABELS.get(value, value),
        key=Keys.BACKEND,
    )
    openai_model: str | None = None
    diffusers_model: str | None = None
    if backend == "openai":
        openai_model = sidebar.text_input("OpenAI image model", key=Keys.OPENAI_MODEL)
        if base.openai_api_key is None:
            sidebar.caption("No key: set OPENAI_API_KEY before starting `atelier ui`.")
    elif backend == "diffusers":
        diffusers_model = sidebar.text_input(
            "Local model (folder or hub id)",
            key=Keys.DIFFUSERS_MODEL,
            help="Any diffusers model: a local folder or a Hugging Face id such as "
            "stable-diffusion-v1-5/stable-diffusion-v1-5. It loads once and stays loaded; "
            "one local model is held at a time, so switching frees the previous one.",
        )
    else:
        sidebar.caption("Model: offline sketch renderer (no download, no GPU).")
    planner = base.effective_chat_model
    sidebar.caption(f"Planner: {'LLM agent (' + planner + ')' if planner else 'offline rules planner'}")

    with sidebar.expander("Image settings"):
        size = st.selectbox("Size", support.size_options(base), key=Keys.SIZE)
        top = support.steps_limit(base, str(backend))
        if int(st.session_state[Keys.STEPS]) > top:  # e.g. 120 steps, then a switch to offline
            st.session_state[Keys.STEPS] = top
        steps = st.slider("Steps", 1, top, key=Keys.STEPS)
        low, high = support.GUIDANCE_RANGE
        guidance = st.slider("Guidance", low, high, step=support.GUIDANCE_STEP, key=Keys.GUIDANCE)
        style = st.selectbox("Style preset", _style_options(base), key=Keys.STYLE)
        verbatim = st.checkbox(
            "Use my prompt exactly",
            key=Keys.VERBATIM,
            help="Send your words to the model as they are, without rewriting.",
        )
        seed_mode = st.radio(
            "Seed", [support.RANDOM_SEED, support.FIXED_SEED], horizontal=True, key=Keys.SEED_MODE
        )
        seed: int | None = None
        if seed_mode == support.FIXED_SEED:
            seed = int(
                st.number_input(
                    "Seed value",
                    min_value=0,
                    max_value=support.MAX_SEED_VALUE,
                    step=1,
                    key=Keys.SEED,
                )
            )
    _settings_to_url(base)
    return support.Choices(
        backend=str(backend),
        openai_image_model=openai_model,
        diffusers_model=diffusers_model,
        size=size,
        steps=int(steps),
        guidance=float(guidance),
        style=style,
        verbatim=bool(verbatim),
        seed=seed,
    )


def setup() -> UiContext:
    """Build this run's context and draw the sidebar; called by the entry script every run."""
    base = base_settings()
    repo = repository(base)
    current_conversation(repo)  # before the sidebar, so a reload highlights the URL's conversation
    _sidebar_conversations(repo)
    choices = _sidebar_settings(base)
    try:
        settings = choices.apply(base)
    except ValueError as exc:
        st.sidebar.error(f"Invalid setting: {exc}")
        settings = base
    ctx = UiContext(base, settings, repo)
    st.session_state[Keys.CONTEXT] = ctx
    return ctx
