"""The history page: every image across conversations, searchable, and one image in detail.

The gallery is `Repository.list_images` with the form's filters (full-text search, backend,
operation, conversation, dates). The conversation filter offers the newest conversations or
those its own search box finds (`Repository.list_conversations`), so any one can be chosen
however many there are; titles are read only for the images on the page. The detail view
shows everything recorded about an image: the words the user wrote beside the prompt the
backend got and the prompt the provider says it used, its parameters, its lineage tree as a
graph, and a side-by-side with its parent.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import streamlit as st

from assistant.one_line import one_line
from assistant.ui import CHAT_PAGE, common, support
from assistant.ui.common import UiContext
from assistant.ui.support import Keys, escape_markdown
from storage.db import StorageError
from storage.models import Image
from storage.repository import NotFound, Repository

GRID_COLUMNS = 4
PAGE_SIZE = 48
ALL = "All"
LIMIT_KEY = "atelier.h.limit"
CONVERSATION_KEY = "atelier.h.conversation"
CONVERSATION_QUERY_KEY = "atelier.h.conversation_query"
SEARCH_HELP = (
    "Every word must appear (as the start of a word); OR between alternatives (fox OR wolf); "
    "-word leaves out what has it; #4 is image #4 of each conversation (pick one beside)."
)
#: the conversation filter's "All conversations" (ids start at 1): a None value would read as
#: no choice at all, and Streamlit shows "Choose an option" once the offered list changes
ALL_CONVERSATIONS = 0
#: how many conversations the conversation filter offers at once: the newest, or the matches
CONVERSATION_CHOICES = 50
#: the gallery's filter widgets; kept alive across the detail view and page switches
FILTER_KEYS = (
    "atelier.h.query",
    "atelier.h.backend",
    "atelier.h.operation",
    CONVERSATION_QUERY_KEY,
    CONVERSATION_KEY,
    "atelier.h.since",
    "atelier.h.until",
)


def keep_filters() -> None:
    """Streamlit drops a widget's value on a run that doesn't draw it (the detail view, the chat
    page); writing the value back makes it plain session state, so the search survives."""
    for key in FILTER_KEYS:
        if key in st.session_state:
            st.session_state[key] = st.session_state[key]


#: the URL query parameter of the image the detail view shows (`?image=16`), so a reload keeps it
IMAGE_PARAM = "image"


def _focus(image_id: int) -> None:
    st.session_state[Keys.FOCUS] = image_id
    st.query_params[IMAGE_PARAM] = str(image_id)


def _back_to_gallery() -> None:
    st.session_state[Keys.FOCUS] = None
    del st.query_params[IMAGE_PARAM]


def _show_in_url(image_id: int | None) -> None:
    wanted = None if image_id is None else str(image_id)
    if st.query_params.get(IMAGE_PARAM) == wanted:
        return
    if wanted is None:
        del st.query_params[IMAGE_PARAM]
    else:
        st.query_params[IMAGE_PARAM] = wanted


def _more() -> None:
    st.session_state[LIMIT_KEY] = int(st.session_state.get(LIMIT_KEY, PAGE_SIZE)) + PAGE_SIZE


# ----- gallery ----------------------------------------------------------------------------------


def _title(titles: dict[int, str], conversation_id: int) -> str:
    return titles.get(conversation_id, f"conversation {conversation_id}")


def _chosen_conversation(repo: Repository, offered: dict[int, str]) -> dict[int, str]:
    """The chosen conversation's title when the list doesn't offer it (an older one, or one the
    search no longer finds), so the choice stays; a deleted one is unchosen instead."""
    chosen = st.session_state.get(CONVERSATION_KEY)
    if not isinstance(chosen, int) or chosen == ALL_CONVERSATIONS or chosen in offered:
        return {}
    title = repo.conversation_titles([chosen])
    if not title:
        st.session_state[CONVERSATION_KEY] = ALL_CONVERSATIONS
    return title


def _conversation_filter(repo: Repository) -> int | None:
    """A search box over conversations (title and messages) above a list of the ones it finds:
    with no words, the newest; any conversation can be reached, however many there are."""
    search = st.text_input(
        "Conversation",
        key=CONVERSATION_QUERY_KEY,
        placeholder="find by title or words…",
        help=f"Words from a conversation's title or messages: the list below then offers up to "
        f"{CONVERSATION_CHOICES} that have them all (otherwise the newest conversations).",
    )
    found = {c.id: c.title for c in repo.list_conversations(limit=CONVERSATION_CHOICES, query=search)}
    choices = {**_chosen_conversation(repo, found), **found}
    conversation_id: int = st.selectbox(
        "Conversation to show",
        [ALL_CONVERSATIONS, *choices],
        key=CONVERSATION_KEY,
        format_func=lambda cid: (
            "All conversations"
            if cid == ALL_CONVERSATIONS
            else f"{one_line(choices.get(cid, ''), 30)} ({cid})"
        ),
        label_visibility="collapsed",
    )
    if not found and search.strip():
        st.caption("No conversation matches.")
    return conversation_id or None


def render_gallery(ctx: UiContext) -> None:
    repo = ctx.repo
    backends, operations = repo.backends_and_operations()
    with st.container(border=True):
        query = st.text_input(
            "Search prompts and instructions",
            key="atelier.h.query",
            placeholder="fox sunset, fox OR wolf, fox -snow, #4…",
            help=SEARCH_HELP,
        )
        # the conversation filter holds a search box and titles: it gets the widest column, so
        # "All conversations" is not cut to "All conversation…" at a laptop's width
        columns = st.columns([2, 2, 3, 2, 2])
        backend = columns[0].selectbox("Backend", [ALL, *backends], key="atelier.h.backend")
        operation = columns[1].selectbox("Operation", [ALL, *operations], key="atelier.h.operation")
        with columns[2]:
            conversation_id = _conversation_filter(repo)
        since = columns[3].date_input("From", value=None, key="atelier.h.since")
        until = columns[4].date_input("To", value=None, key="atelier.h.until")
    filters = support.gallery_filter(
        query=query or "",
        backend=None if backend == ALL else str(backend),
        operation=None if operation == ALL else str(operation),
        conversation_id=conversation_id,
        since=since if not isinstance(since, tuple) else None,
        until=until if not isinstance(until, tuple) else None,
    )
    limit = int(st.session_state.get(LIMIT_KEY, PAGE_SIZE))
    images = repo.list_images(filters, limit=limit + 1)
    more = len(images) > limit
    images = images[:limit]
    if not images:
        st.info(
            "No images match."
            if query or filters != support.gallery_filter()
            else "No images yet: start a conversation on the Chat page."
        )
        return
    st.caption(f"{len(images)}{'+' if more else ''} image(s), newest first")
    titles = repo.conversation_titles({image.conversation_id for image in images})
    grid = st.columns(GRID_COLUMNS)
    for index, image in enumerate(images):
        with grid[index % GRID_COLUMNS]:
            _gallery_cell(repo, image, _title(titles, image.conversation_id))
    if more:
        st.button("Show more", key="atelier.h.more", on_click=_more)


def _gallery_cell(repo: Repository, image: Image, title: str) -> None:
    with st.container(border=True):
        common.show_thumbnail(
            image.sha256, repo.image_path(image), width="stretch", alt=support.alt_text(image)
        )
        made_by = "" if image.backend == image.operation else f" · {image.backend}"  # "upload · upload"
        st.caption(f"#{image.number} · {image.operation}{made_by}")
        st.markdown(escape_markdown(one_line(image.instruction or image.prompt, 60)) or "—")
        st.caption(f"in {escape_markdown(one_line(title, 40))}")
        st.button(
            "Details", key=f"atelier.h.detail.{image.id}", on_click=_focus, args=(image.id,), width="stretch"
        )


# ----- detail -----------------------------------------------------------------------------------


def _continue_from(image: Image) -> None:
    """Open the chat on the image's conversation with '#N: ' ready in the edit box."""
    common.select_conversation(image.conversation_id, goto_chat=False)
    st.session_state[Keys.EDIT_PREFILL] = support.edit_prefill(image.number)


def _prompt_block(label: str, text: str | None, empty: str) -> None:
    st.markdown(f"**{label}**")
    if text:
        st.code(text, language=None, wrap_lines=True)
    else:
        st.caption(empty)


def render_detail(ctx: UiContext, image: Image) -> None:
    repo = ctx.repo
    title = _title(repo.conversation_titles([image.conversation_id]), image.conversation_id)
    nodes = repo.lineage_tree(image.id)
    numbers = {
        node.image.id: node.image.number
        for node in nodes
        if node.image.conversation_id == image.conversation_id
    }
    parent = next((node.image for node in nodes if node.image.id == image.parent_id), None)

    st.button(
        "Back to gallery", key="atelier.h.back", icon=":material/arrow_back:", on_click=_back_to_gallery
    )
    st.subheader(f"#{image.number} · {escape_markdown(one_line(title, 60))}")
    left, right = st.columns([3, 2])
    with left:
        file_there = common.show_image(repo.image_path(image), width="stretch", alt=support.alt_text(image))
    with right:
        for label, value in support.image_fields(image, title, numbers):
            st.markdown(f"**{escape_markdown(label)}:** {escape_markdown(value)}")
        if st.button(
            "Continue from here",
            key="atelier.h.continue",
            type="primary",
            icon=":material/chat:",
            help=f"Open this conversation with “#{image.number}: ” ready to edit",
        ):
            _continue_from(image)
            st.switch_page(CHAT_PAGE)
        if file_there:
            st.download_button(
                "Download PNG",
                data=partial(repo.image_bytes, image),
                file_name=f"atelier-{image.conversation_id}-{image.number}.png",
                mime="image/png",
                key="atelier.h.png",
                icon=":material/download:",
                on_click="ignore",
            )

    st.subheader("Prompts")
    _prompt_block("You wrote", image.instruction, "(no words: this image came from an action or an upload)")
    _prompt_block("Prompt used", image.prompt, "(none: a model-free step)")
    _prompt_block("Negative prompt", image.negative_prompt, "(none)")
    _prompt_block(
        "Provider's revised prompt", image.revised_prompt, "(the backend did not revise the prompt)"
    )

    with st.expander("All parameters", expanded=False):
        st.json(image.params or {})
        _generation_details(repo, image)

    st.subheader("Lineage")
    st.graphviz_chart(support.lineage_dot(nodes, image.id))
    if len(nodes) > 1:
        with st.container(horizontal=True, gap="small"):
            # in number order, as the images were made: the tree above shows how they branch
            for node in sorted(nodes, key=lambda n: (n.image.conversation_id, n.image.number)):
                if node.image.id != image.id:
                    st.button(
                        f"Open #{node.image.number}",
                        key=f"atelier.h.node.{node.image.id}",
                        on_click=_focus,
                        args=(node.image.id,),
                    )

    if parent is not None:
        st.subheader("Compared with its parent")
        before, after = st.columns(2)
        with before:
            common.show_image(repo.image_path(parent), width="stretch", alt=support.alt_text(parent))
            st.caption(f"#{parent.number} · {parent.operation} (parent)")
        with after:
            common.show_image(repo.image_path(image), width="stretch", alt=support.alt_text(image))
            st.caption(f"#{image.number} · {image.operation}")


def _generation_details(repo: Repository, image: Image) -> None:
    if image.generation_id is None:
        return
    try:
        generation, inputs = repo.generation(image.generation_id)
    except StorageError:
        return
    details: dict[str, Any] = {
        "backend call": generation.id,
        "status": generation.status,
        "duration_ms": generation.duration_ms,
        "cost_usd": generation.cost_usd,
        "usage": generation.usage,
        "inputs": [{"image_id": i.image_id, "role": i.role} for i in inputs],
    }
    st.markdown("**Backend call**")
    st.json(details)


# ----- the page ----------------------------------------------------------------------------------


def render() -> None:
    st.set_page_config(layout="wide")
    ctx = common.context()
    # the URL names the image in detail (a reload, a link, the chat's Lineage button); a session
    # that comes back to the page without it (the page link) reopens the one it was showing
    requested = st.query_params.get(IMAGE_PARAM)
    if requested is not None:
        st.session_state[Keys.FOCUS] = support.parse_conversation_param(requested)  # a positive id
    st.title("History")
    common.show_flashes()
    focus = st.session_state.get(Keys.FOCUS)
    if focus is not None:
        try:
            image = ctx.repo.get_image(int(focus))
        except NotFound:
            st.session_state[Keys.FOCUS] = None
            st.warning("That image no longer exists.")
        else:
            _show_in_url(image.id)
            render_detail(ctx, image)
            return
    _show_in_url(None)
    render_gallery(ctx)
