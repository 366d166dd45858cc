"""The chat page: the conversation from the database, then one turn per submitted message.

History is always drawn from the repository, so a reload or a restart shows exactly what
was stored. A turn runs in its conversation's lane (`assistant.turn_lanes`), not in this
script: the page draws it live from its events (plan in a status box, a progress bar fed by
Progress events) under the history, then reruns and shows the stored result. A rerun only
stops the drawing; the next run picks the turn up again.
Image actions only queue a request text ("three variations of #2"); the planner decides.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import streamlit as st

from assistant.backends import backend_banner
from assistant.core import Attachment
from assistant.events import Event, Failed, ImageReady, PlanMade, Progress, Reply
from assistant.settings import BackendChoice
from assistant.turn_lanes import LiveTurn, TurnLane
from assistant.ui import HISTORY_PAGE, common, support
from assistant.ui.common import UiContext
from assistant.ui.support import ImageView, Keys, MessageView, escape_markdown
from storage.db import StorageError
from storage.models import Conversation
from storage.repository import Repository

log = logging.getLogger(__name__)

IMAGE_TYPES = ["png", "jpg", "jpeg", "webp"]

EXAMPLES = (
    "a red fox in the snow at night",
    "a cozy cabin by a lake at sunset, watercolor",
    "#1 but at sunset",
    "three variations of #2",
    "upscale #3 2x",
)


@dataclass(frozen=True)
class QueuedRequest:
    """A message to send on the next run.

    `with_attachments`: the mask and the "use as init" image go with it (words the user typed
    into the edit box); an image action's button leaves them attached for the next message.
    """

    text: str
    with_attachments: bool = False


@dataclass
class TurnRequest:
    text: str
    attachments: list[Attachment] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    #: words the user typed (the chat box, the edit box), not a button's request
    typed: bool = True
    #: whether the "use as init" image and the mask went with it (then they are used up)
    used_init: bool = False
    used_mask: bool = False


# ----- callbacks (run before the script, so they may set widget state) -----------------------


#: the "More" popover under each image: `MORE_KEY + str(image.id)`, its open state in session state
MORE_KEY = "atelier.more."


def _close_more_menus() -> None:
    """A popover stays open after a button in it is used; the user chose, so it closes."""
    for key in [k for k in st.session_state if isinstance(k, str) and k.startswith(MORE_KEY)]:
        st.session_state[key] = False


def _queue(text: str) -> None:
    _close_more_menus()
    st.session_state[Keys.PENDING] = QueuedRequest(text)
    st.toast(f"Asked for “{text}”: the answer comes at the end of the chat.", icon=":material/south:")


def _open_edit(number: int) -> None:
    st.session_state[Keys.EDIT_PREFILL] = support.edit_prefill(number)
    st.toast(
        f"Say what to change in #{number} in the edit box at the end of the chat.", icon=":material/edit:"
    )


def _close_edit() -> None:
    st.session_state[Keys.EDIT_OPEN] = False


def _submit_edit() -> None:
    text = str(st.session_state.get(edit_box_key()) or "").strip()
    st.session_state[Keys.EDIT_OPEN] = False
    if text:
        st.session_state[Keys.PENDING] = QueuedRequest(text, with_attachments=True)


def _use_as_init(image_id: int) -> None:
    _close_more_menus()
    st.session_state[Keys.INIT_IMAGE] = image_id
    st.toast("Attached to your next message as its starting image.", icon=":material/input:")


def _clear_init() -> None:
    st.session_state[Keys.INIT_IMAGE] = None


def edit_box_key() -> str:
    """The widget key of the edit box now open (a new one each time a box is opened)."""
    return str(st.session_state.get(Keys.EDIT_BOX) or Keys.EDIT_TEXT)


def _open_edit_box(prefill: str) -> None:
    """Open the edit box on `prefill` under a widget key it never had before.

    Reusing one key is not enough: text typed into a form's box (without Enter) lives in the
    browser until the form is sent, so after Edit on another image the box would show
    "#2: " while "Send edit" still sent "#1: …" typed earlier. A new key is a new widget.
    """
    old = st.session_state.get(Keys.EDIT_BOX)
    if old is not None:
        st.session_state.pop(old, None)
    generation = int(st.session_state.get(Keys.EDIT_GENERATION, 0)) + 1
    key = f"{Keys.EDIT_TEXT}.{generation}"
    st.session_state[Keys.EDIT_GENERATION] = generation
    st.session_state[Keys.EDIT_BOX] = key
    st.session_state[key] = prefill
    st.session_state[Keys.EDIT_OPEN] = True


# ----- history ---------------------------------------------------------------------------------


def _render_plan(plan: dict[str, Any] | Any, where: Any = st) -> None:
    for label, value in support.plan_rows(plan):
        where.markdown(f"**{escape_markdown(label)}:** {escape_markdown(value)}")


def _png_bytes(repo: Repository, image_id: int) -> bytes:
    """The stored file, read only when the user clicks download (not on every rerun)."""
    return repo.image_bytes(repo.get_image(image_id))


def _render_image(repo: Repository, image: ImageView, max_side: int) -> None:
    """The picture, what made it, and what to do with it next.

    The two things people do most sit in one row; the rest wait under "More", so seven
    buttons do not wrap into rows under every picture. A button that can only fail (an
    upscale past the side limit) is not offered. What a button asks for runs at the end of
    the chat, so a toast says so: in a long chat the button's effect is out of view.
    """
    # a cached thumbnail: the full-size file is for the history's detail view and the download
    file_there = common.show_thumbnail(image.sha256, image.path, width="stretch", alt=image.alt)
    st.caption(image.caption)
    st.caption(image.settings_line)
    number = image.number
    with st.container(horizontal=True, gap="small"):
        st.button(
            "Variations",
            key=f"atelier.var.{image.id}",
            icon=":material/shuffle:",
            on_click=_queue,
            args=(support.variations_request(number),),
            help=f"Ask for three variations of #{number}",
        )
        st.button(
            "Edit",
            key=f"atelier.edit.{image.id}",
            icon=":material/edit:",
            on_click=_open_edit,
            args=(number,),
            help=f"Say what to change in #{number}",
        )
        with st.popover(
            "More",
            icon=":material/more_horiz:",
            help=f"More for #{number}",
            key=f"{MORE_KEY}{image.id}",
            on_change="rerun",  # so its open state is in session state, and a chosen action closes it
        ):
            _more_actions(repo, image, file_there, max_side)


def _more_actions(repo: Repository, image: ImageView, file_there: bool, max_side: int) -> None:
    number = image.number
    # first: a download leaves "More" open with its tooltip showing above the button, and
    # above the first button that tooltip covers no other action
    if file_there:
        st.download_button(
            "PNG",
            data=partial(_png_bytes, repo, image.id),
            file_name=f"atelier-{image.conversation_id}-{number}.png",
            mime="image/png",
            key=f"atelier.png.{image.id}",
            icon=":material/download:",
            on_click="ignore",
            help="The stored PNG, with its generation parameters and lineage in its metadata",
            width="stretch",
        )
    if image.can_upscale(2, max_side):
        st.button(
            "Upscale 2×",
            key=f"atelier.up.{image.id}",
            icon=":material/open_in_full:",
            on_click=_queue,
            args=(support.upscale_request(number),),
            help=f"Upscale #{number} 2x",
            width="stretch",
        )
    if image.can_regenerate:  # not offered where it could only say "nothing to re-roll"
        st.button(
            "Regenerate",
            key=f"atelier.regen.{image.id}",
            icon=":material/refresh:",
            on_click=_queue,
            args=(support.regenerate_request(number),),
            help=f"The same request as #{number} with a new seed",
            width="stretch",
        )
    st.button(
        "Use as init",
        key=f"atelier.init.{image.id}",
        icon=":material/input:",
        on_click=_use_as_init,
        args=(image.id,),
        help=f"Attach #{number} to your next message as the image to start from",
        width="stretch",
    )
    if st.button(
        "Lineage",
        key=f"atelier.lineage.{image.id}",
        icon=":material/account_tree:",
        help=f"Open #{number} in the history with its lineage tree",
        width="stretch",
    ):
        st.switch_page(HISTORY_PAGE, query_params={"image": str(image.id)})


def _render_images(repo: Repository, images: Sequence[ImageView], max_side: int) -> None:
    columns = st.columns(min(3, max(2, len(images))))
    for index, image in enumerate(images):
        with columns[index % len(columns)]:
            _render_image(repo, image, max_side)


def _render_chain(message_id: int | None, chain: Sequence[ImageView]) -> None:
    """Small pictures of each step, root first, beside the words of a lineage answer; the full
    tree (branches and all) is one click away in History."""
    with st.container(horizontal=True, gap="small", vertical_alignment="center"):
        for index, step in enumerate(chain):
            if index:
                st.markdown(":material/arrow_forward:", width="content")
            with st.container(width=CHAIN_THUMBNAIL_PX):
                common.show_thumbnail(step.sha256, step.path, width=CHAIN_THUMBNAIL_PX, alt=step.alt)
                st.caption(f"#{step.number} · {step.operation}")
    last = chain[-1]
    if st.button(
        f"Open the lineage of #{last.number}",
        key=f"atelier.chain.{message_id}.{last.id}",
        icon=":material/account_tree:",
        help=f"#{last.number} in the history, with its whole lineage tree",
    ):
        st.switch_page(HISTORY_PAGE, query_params={"image": str(last.id)})


#: the side of each step's picture under a lineage answer: small, so a chain of six fits a phone
CHAIN_THUMBNAIL_PX = 96

#: under a message whose turn never ended (the server stopped or restarted while it ran)
UNANSWERED = "No reply was stored for this: Atelier stopped before it finished."
UNANSWERED_LAST = f"{UNANSWERED} Say “try again” to run it again."


def _render_message(repo: Repository, view: MessageView, max_side: int) -> None:
    with st.chat_message(view.role):
        if view.text:
            if view.failed:
                st.error(escape_markdown(view.text), icon=":material/error:")
            elif view.cancelled:
                st.warning(escape_markdown(view.text), icon=":material/stop_circle:")
            else:
                st.markdown(escape_markdown(view.text))
        if view.unanswered:
            st.caption(UNANSWERED_LAST if view.last else UNANSWERED)
        for chain in view.chains:
            _render_chain(view.id, chain)
        if view.role == "assistant" and view.plan and (view.plan.get("prompt") or view.plan.get("error")):
            with st.expander("How I read your request"):
                _render_plan(view.plan)
        if view.images:
            _render_images(repo, view.images, max_side)


def render_history(repo: Repository, conversation_id: int, max_side: int, up_to: int | None = None) -> None:
    """The stored conversation; with `up_to`, only what was there before the turn now running.

    The running turn writes its rows as it goes (its message first); the page draws that turn
    live under the history, so drawing its rows here too would show it twice.
    """
    messages = repo.messages(conversation_id)
    images = repo.conversation_images(conversation_id)
    if up_to is not None:
        messages = [message for message in messages if message.id <= up_to]
        images = [image for image in images if image.message_id is None or image.message_id <= up_to]
    views = support.conversation_view(messages, images, repo.image_path)
    for view in views:
        _render_message(repo, view, max_side)


# ----- the input area --------------------------------------------------------------------------


def _apply_init_image(repo: Repository, request: TurnRequest, has_mask: bool) -> None:
    """Make "use as init" refer to the image by number, so the result is linked in the lineage.

    Within its own conversation the text becomes "use #N as a starting point: …" (or "#N: …"
    with a mask, for inpainting); an image from another conversation is attached as an upload.
    """
    image_id = st.session_state.get(Keys.INIT_IMAGE)
    if image_id is None:
        return
    try:
        image = repo.get_image(int(image_id))
        if image.conversation_id == st.session_state.get(Keys.CONVERSATION):
            prefix = f"#{image.number}: " if has_mask else f"use #{image.number} as a starting point: "
            request.text = prefix + request.text
            request.labels.append(f"starting image #{image.number}")
        else:
            data = repo.image_bytes(image)
            request.attachments.append(Attachment(data, kind="image", filename=f"#{image.number}.png"))
            request.labels.append(f"image #{image.number}.png")
        request.used_init = True
    except (StorageError, OSError):
        st.session_state[Keys.INIT_IMAGE] = None


def _input_area(ctx: UiContext) -> TurnRequest | None:
    """Draw the edit box, attachment notes and the chat input; return what to send, if anything."""
    repo = ctx.repo
    prefill = st.session_state.pop(Keys.EDIT_PREFILL, None)
    if prefill is not None:
        _open_edit_box(str(prefill))
    if st.session_state.get(Keys.EDIT_OPEN):
        with st.form("atelier.edit_form"):
            st.text_input(
                "Edit an image: say what to change after its number",
                key=edit_box_key(),
                placeholder="#1: make the sky stormy",
            )
            with st.container(horizontal=True):
                st.form_submit_button("Send edit", type="primary", on_click=_submit_edit)
                st.form_submit_button("Cancel", on_click=_close_edit)

    init_id = st.session_state.get(Keys.INIT_IMAGE)
    if init_id is not None:
        try:
            init_number = repo.get_image(int(init_id)).number
        except StorageError:
            st.session_state[Keys.INIT_IMAGE] = None
        else:
            with st.container(horizontal=True, vertical_alignment="center"):
                st.caption(f"#{init_number} is attached to your next message as its starting image.")
                st.button("Don't attach it", key="atelier.clear_init", on_click=_clear_init)

    generation = int(st.session_state.get(Keys.MASK_GENERATION, 0))
    with st.expander("Inpainting mask (optional)"):
        mask_file = st.file_uploader(
            "Mask: white where the image should change", type=IMAGE_TYPES, key=f"atelier.mask.{generation}"
        )
        st.caption(
            "Attach the image in the chat box (or use an image's “Use as init”), "
            "or refer to one by number: “#2: replace the sky with stars”."
        )

    submitted = st.chat_input(
        "Describe an image, or a change to one…",
        accept_file=True,
        file_type=IMAGE_TYPES,
        max_chars=ctx.settings.max_message_chars,
        key="atelier.chat_input",
    )
    queued: QueuedRequest | None = st.session_state.pop(Keys.PENDING, None)
    text: str | None = None
    files: list[Any] = []
    with_attachments = False
    if submitted is not None:
        text = str(submitted.get("text") or "") if hasattr(submitted, "get") else str(submitted)
        files = list(submitted.get("files") or []) if hasattr(submitted, "get") else []
        with_attachments = True
    elif queued is not None:
        text = queued.text
        with_attachments = queued.with_attachments
    if text is None:
        return None

    request = TurnRequest(text=text, typed=with_attachments)
    if with_attachments:
        for upload in files[:1]:
            request.attachments.append(Attachment(upload.getvalue(), kind="image", filename=upload.name))
            request.labels.append(f"image {upload.name}")
        if not files:
            _apply_init_image(repo, request, has_mask=mask_file is not None)
        if mask_file is not None:
            request.attachments.append(Attachment(mask_file.getvalue(), kind="mask", filename=mask_file.name))
            request.labels.append(f"mask {mask_file.name}")
            request.used_mask = True
    return request


# ----- one turn ---------------------------------------------------------------------------------

#: how often a watching page wakes when nothing happens: the elapsed time ticks, and a rerun
#: (a click, a new message) gets through within this long
WATCH_TICK_S = 0.5


def _send(ctx: UiContext, conversation: Conversation | None, request: TurnRequest) -> TurnLane:
    """Put the message into its conversation's lane; it runs there whatever the page does next."""
    turn = LiveTurn(
        assistant=common.make_assistant(ctx.settings, ctx.repo),
        text=request.text,
        attachments=tuple(request.attachments),
        labels=tuple(request.labels),
    )
    own = st.session_state.get(Keys.LANE)
    lane = common.turn_lanes().submit(
        ctx.settings.effective_database_url,
        conversation.id if conversation else None,
        turn,
        new_lane=own if conversation is None else None,
    )
    st.session_state[Keys.LANE] = lane
    # what went with this message is used up; a button's request (Variations on #2) leaves the
    # "use as init" image and the mask attached for the next message the user types
    if request.used_init:
        st.session_state[Keys.INIT_IMAGE] = None
    if request.used_mask:
        st.session_state[Keys.MASK_GENERATION] = int(st.session_state.get(Keys.MASK_GENERATION, 0)) + 1
    return lane


def _user_message(text: str, labels: Sequence[str]) -> None:
    st.markdown(escape_markdown(text) if text else "_(no text)_")
    for label in labels:
        st.caption(f"Attached: {escape_markdown(label)}")


def _remove_waiting(lane: TurnLane, turn: LiveTurn) -> None:
    if lane.remove(turn):
        common.flash(f"Not sent: “{turn.text}”.", "info")


def _draw_waiting(lane: TurnLane, watched: LiveTurn) -> None:
    for turn in lane.waiting:
        if turn is watched:
            continue
        with st.chat_message("user"):
            _user_message(turn.text, turn.labels)
            with st.container(horizontal=True, vertical_alignment="center"):
                st.caption("Waiting: this runs when the request above is done.")
                st.button(
                    "Don't send",
                    key=f"atelier.unqueue.{turn.number}",
                    icon=":material/close:",
                    on_click=_remove_waiting,
                    args=(lane, turn),
                )


class _TurnDrawing:
    """The live part of a turn (plan, progress bar, ready images) inside its status box."""

    def __init__(self, status: Any) -> None:
        self.status = status
        self.bar: Any = None
        self.failure: Failed | None = None

    def draw(self, event: Event) -> None:
        status = self.status
        if event.conversation_id:
            st.session_state[Keys.CONVERSATION] = event.conversation_id
        if isinstance(event, PlanMade):
            # stay open and running while the backend works: the plan and the bar are the
            # point of the box (`with status:` would mark it complete on leaving the block)
            status.update(
                label=f"{event.intent.capitalize()} · {event.backend} ({event.model})",
                state="running",
                expanded=True,
            )
            _render_plan(event.to_dict(), status)
            self.bar = status.progress(0.0, text="Starting…")
        elif isinstance(event, Progress):
            if self.bar is None:
                self.bar = status.progress(0.0)
            fraction = min(1.0, event.step / event.total) if event.total else 0.0
            self.bar.progress(fraction, text=f"Step {event.step} of {event.total}")
        elif isinstance(event, ImageReady):
            status.write(f"#{event.number} is ready.")
        elif isinstance(event, Reply):
            if self.bar is not None:
                self.bar.progress(1.0, text="Done")
            status.update(label="Done", state="complete", expanded=False)
        elif isinstance(event, Failed):
            self.failure = event
            if event.cancelled:
                status.update(label="Stopped", state="error", expanded=False)
                st.warning(escape_markdown(event.message))
            else:
                status.update(label="That didn't work", state="error")
                st.error(escape_markdown(event.message))


def _watch(ctx: UiContext, lane: TurnLane, turn: LiveTurn) -> None:
    """Draw `turn` as its events arrive, then rerun to show what was stored.

    The turn runs in its lane, not here: a rerun, a reload or another page only stops this
    drawing, and the next run of the page picks the turn up where it is.
    """
    with st.chat_message("user"):
        _user_message(turn.text, turn.labels)
    with st.chat_message("assistant"):
        status = st.status("Understanding your request…", expanded=True)
        drawing = _TurnDrawing(status)
        with st.container(horizontal=True, vertical_alignment="center"):
            elapsed = st.empty()
            st.button(
                "Stop",
                key=f"atelier.stop.{turn.number}",
                icon=":material/stop_circle:",
                on_click=turn.stop,
                help="Stop this request between steps (it is kept as stopped)",
            )
    _draw_waiting(lane, turn)
    started = turn.started_at or time.monotonic()
    seen = 0
    finished = False
    while not finished:
        events, finished = turn.events_after(seen, timeout=WATCH_TICK_S)
        seen += len(events)
        if lane.conversation_id is not None:
            common.show_new_conversation(lane.conversation_id)
        for index, event in enumerate(events):
            later_progress = index + 1 < len(events) and isinstance(events[index + 1], Progress)
            if isinstance(event, Progress) and later_progress:
                continue  # a backlog of steps: the bar only needs the newest
            drawing.draw(event)
        if not finished:
            seconds = int(time.monotonic() - started)
            elapsed.caption("Stopping…" if turn.stop_requested else f"Running for {seconds} s")
    failure = drawing.failure
    if failure is not None and not _failure_recorded(ctx.repo, failure):
        common.flash(failure.message)
    st.rerun()


def _failure_recorded(repo: Repository, failure: Failed) -> bool:
    """Whether the failure is in the conversation already (then the rerun shows it)."""
    if not failure.conversation_id:
        return False
    try:
        last = repo.messages(failure.conversation_id, limit=1)
    except StorageError:
        return False
    return bool(last) and last[-1].status in ("failed", "cancelled") and last[-1].content == failure.message


# ----- the page ----------------------------------------------------------------------------------


def _adopt_own_lane() -> None:
    """Open the conversation this session's first message created, if the page missed it.

    A page left (History, a rerun) before the first turn reported anything never learnt the new
    conversation's id; the session's lane knows it. "New conversation" forgets the lane.
    """
    lane = st.session_state.get(Keys.LANE)
    if lane is None or st.session_state.get(Keys.CONVERSATION) is not None:
        return
    if lane.conversation_id is not None:
        st.session_state[Keys.CONVERSATION] = lane.conversation_id


def _lane_to_watch(ctx: UiContext, conversation: Conversation | None) -> TurnLane | None:
    """The busy lane of the conversation shown (whoever sent its turns), if there is one."""
    if conversation is not None:
        return common.turn_lanes().find(ctx.settings.effective_database_url, conversation.id)
    own: TurnLane | None = st.session_state.get(Keys.LANE)
    return own if own is not None and own.busy and own.conversation_id is None else None


def render() -> None:
    ctx = common.context()
    repo = ctx.repo
    _adopt_own_lane()
    conversation = common.current_conversation(repo)
    st.title(escape_markdown(conversation.title) if conversation else "Atelier")
    banner = backend_banner(ctx.settings)
    if ctx.settings.effective_backend is BackendChoice.OFFLINE:
        st.info(escape_markdown(banner), icon=":material/info:")
    else:
        st.caption(escape_markdown(banner))
    common.show_flashes()
    notice = st.container()  # filled once the input area says whether a message is being sent
    gone = bool(st.session_state.pop(Keys.CONVERSATION_GONE, False))
    lane = _lane_to_watch(ctx, conversation)
    watched = lane.current if lane is not None else None
    if conversation is not None:
        render_history(
            repo, conversation.id, ctx.settings.max_side, up_to=watched.shown_after if watched else None
        )
    elif watched is None:
        st.markdown(
            "Describe a picture to start a new conversation. Each image gets a number "
            "(#1, #2, …) you can refer to: " + ", ".join(f"“{escape_markdown(e)}”" for e in EXAMPLES) + "."
        )
    live = st.container()  # the turn draws here, under the history and above the input area
    request = _input_area(ctx)
    if gone:
        request = _after_deletion(notice, request)
    if request is not None:
        lane = _send(ctx, conversation, request)
        watched = watched or lane.current
    if lane is not None and watched is not None:
        with live:
            _watch(ctx, lane, watched)


#: what the chat says when the conversation it showed was deleted in another tab or window
GONE = "This conversation was deleted (in another tab or window)"
GONE_NEW = f"{GONE}; your message started a new conversation."
GONE_IDLE = f"{GONE}. Describe a picture to start a new conversation."
GONE_ACTION = f"{GONE}, so that action was not sent: its images are gone too."


def _after_deletion(notice: Any, request: TurnRequest | None) -> TurnRequest | None:
    """Say that the conversation is gone, and what became of what the user was sending.

    Typed words start a new conversation (nothing typed is lost) and the notice says so; a
    button's request ("three variations of #2") only made sense for the deleted images, so it
    is not sent. The notice is drawn now and, for a message, again after the turn's rerun.
    """
    if request is None:
        notice.warning(GONE_IDLE, icon=":material/delete:")
        return None
    if not request.typed:
        notice.warning(GONE_ACTION, icon=":material/delete:")
        return None
    notice.warning(GONE_NEW, icon=":material/delete:")
    common.flash(GONE_NEW, "warning")
    return request
