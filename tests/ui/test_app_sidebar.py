"""The sidebar's conversation list when there are many: older ones stay reachable.

The conversations are made through a second Repository on the app's database (as if earlier
sessions had made them), then the app is opened on it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from assistant.ui.common import CONVERSATIONS_PAGE
from assistant.ui.support import Keys
from storage.repository import Repository
from tests.ui.conftest import APP_FILE, TIMEOUT, assert_ok, captions, click, new_app, unescape

MANY = CONVERSATIONS_PAGE + 30


def listed(at: AppTest) -> list[int]:
    """The conversation ids the sidebar lists, top to bottom."""
    prefix = "atelier.conversation."
    return [int(b.key[len(prefix) :]) for b in at.sidebar.button if b.key and b.key.startswith(prefix)]


@pytest.fixture
def many(data_dir: Path, stored: Repository) -> list[int]:
    """MANY conversations, "Trip 001" the oldest; "Trip 005" talked about a lighthouse."""
    ids: list[int] = []
    for n in range(1, MANY + 1):
        ids.append(stored.create_conversation(f"Trip {n:03d}").id)
        if n == 5:  # said before the next one starts, so the order stays the creation order
            stored.add_message(ids[-1], "user", "a lighthouse on a cliff at dawn")
    stored.add_message(ids[-1], "user", "a quiet harbour")
    return ids


def test_older_conversations_are_reachable_with_show_more(many: list[int]) -> None:
    app = new_app()
    shown = listed(app)
    assert len(shown) == CONVERSATIONS_PAGE
    assert shown[0] == many[-1] and many[0] not in shown  # newest first; the oldest not yet

    click(app, "atelier.conversations_more")
    assert listed(app) == many[::-1]  # every conversation, still newest first
    assert "atelier.conversations_more" not in [b.key for b in app.sidebar.button]

    click(app, f"atelier.conversation.{many[0]}")
    assert unescape(app.title[0].value) == "Trip 001"
    assert app.session_state[Keys.CONVERSATION] == many[0]
    assert app.sidebar.button(key=f"atelier.conversation.{many[0]}").proto.type == "primary"


def test_the_sidebar_search_finds_any_conversation(many: list[int]) -> None:
    app = new_app()
    search = app.sidebar.text_input(key=Keys.CONVERSATION_QUERY)
    search.set_value("trip 007").run()
    assert_ok(app)
    assert listed(app) == [many[6]]

    app.sidebar.text_input(key=Keys.CONVERSATION_QUERY).set_value("LIGHTHOUSE").run()
    assert listed(app) == [many[4]]  # found by what was said in it, ignoring case
    click(app, f"atelier.conversation.{many[4]}")
    assert unescape(app.title[0].value) == "Trip 005"
    assert "a lighthouse on a cliff at dawn" in [unescape(m.value) for m in app.markdown]

    app.sidebar.text_input(key=Keys.CONVERSATION_QUERY).set_value("50% off_").run()
    assert listed(app) == []  # % and _ are literal characters, not wildcards
    assert "No conversation matches." in captions(app)

    app.sidebar.text_input(key=Keys.CONVERSATION_QUERY).set_value("").run()
    assert len(listed(app)) == CONVERSATIONS_PAGE + 1  # the page, plus the open one pinned on top


def test_a_link_to_an_old_conversation_lists_and_highlights_it(many: list[int]) -> None:
    app = AppTest.from_file(str(APP_FILE), default_timeout=TIMEOUT)
    app.query_params["c"] = str(many[0])
    app.run()
    assert_ok(app)
    assert listed(app)[0] == many[0]
    assert app.sidebar.button(key=f"atelier.conversation.{many[0]}").proto.type == "primary"
    assert app.sidebar.text_input(key=f"atelier.rename.{many[0]}").value == "Trip 001"  # and renamable


def test_conversations_with_the_same_title_can_be_told_apart(data_dir: Path, stored: Repository) -> None:
    twins = [stored.create_conversation("Foxes").id for _ in range(2)]
    other = stored.create_conversation("Whales").id
    app = new_app()
    label = {
        cid: unescape(app.sidebar.button(key=f"atelier.conversation.{cid}").label) for cid in [*twins, other]
    }
    assert label[other] == "Whales"  # a title of its own needs nothing more
    assert len({label[cid] for cid in twins}) == 2, label
    assert all(label[cid].startswith("Foxes · ") for cid in twins), label
