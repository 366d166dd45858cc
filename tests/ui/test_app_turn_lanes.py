"""The chat page watches turns that run in their conversation's lane, not in the page itself.

A reload (a new session), another page or a message sent meanwhile used to stop the running
turn. Here a turn is held mid-run by a gate backend while the app runs; the gate opens from a
timer, as a slow model would finish. Pixels and order are checked through the database.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from streamlit.testing.v1 import AppTest

from assistant.core import Assistant
from assistant.settings import Settings
from assistant.turn_lanes import LiveTurn
from assistant.ui import common
from assistant.ui.support import Keys
from storage.repository import Repository
from tests.assistant.test_turn_lanes import GateBackend
from tests.ui.conftest import APP_FILE, TIMEOUT, assert_ok, captions, send, unescape

FOX = "a red fox in the snow at night"


@pytest.fixture
def gate() -> Iterator[GateBackend]:
    backend = GateBackend()
    yield backend
    backend.gate.set()  # never leave a lane waiting behind a failed test


def start_held_turn(gate: GateBackend, conversation_id: int | None, text: str) -> LiveTurn:
    """A turn sent from somewhere else (another tab, before a reload), now held at the gate."""
    from assistant.runtime import open_repository

    settings = Settings()
    turn = LiveTurn(assistant=Assistant(settings, open_repository(settings), backend=gate), text=text)
    common.turn_lanes().submit(settings.effective_database_url, conversation_id, turn)
    assert gate.waiting.wait(TIMEOUT)
    return turn


def open_later(gate: GateBackend, seconds: float = 1.0) -> threading.Timer:
    timer = threading.Timer(seconds, gate.gate.set)
    timer.start()
    return timer


def rows(repo: Repository, conversation_id: int) -> list[tuple[str, str, str]]:
    return [(m.role, m.status, m.content) for m in repo.messages(conversation_id)]


def test_a_reload_while_a_turn_runs_shows_it_running_then_its_image(
    app: AppTest, stored: Repository, gate: GateBackend
) -> None:
    send(app, FOX)
    conversation_id = app.session_state[Keys.CONVERSATION]
    turn = start_held_turn(gate, conversation_id, "make it snowier")

    reloaded = AppTest.from_file(str(APP_FILE), default_timeout=TIMEOUT)
    reloaded.query_params["c"] = str(conversation_id)
    open_later(gate)
    reloaded.run()  # the page watches the held turn until it is done, then shows the record
    assert_ok(reloaded)
    assert turn.finished
    assert [(role, status) for role, status, _ in rows(stored, conversation_id)] == [
        ("user", "ok"),
        ("assistant", "ok"),
        ("user", "ok"),
        ("assistant", "ok"),
    ]
    # drawn once each: the watched turn's rows are not drawn twice after it is stored
    texts = [unescape(m.markdown[0].value) for m in reloaded.chat_message if m.name == "user"]
    assert texts == [FOX, "make it snowier"]
    assert "#2 · edit · from #1" in captions(reloaded)
    fox, snowier = stored.conversation_images(conversation_id)
    assert snowier.parent_id == fox.id


def test_a_message_sent_while_a_turn_runs_waits_for_it_instead_of_stopping_it(
    app: AppTest, stored: Repository, gate: GateBackend
) -> None:
    send(app, FOX)
    conversation_id = app.session_state[Keys.CONVERSATION]
    start_held_turn(gate, conversation_id, "make it snowier")
    open_later(gate)
    send(app, "three variations of #2")  # #2 is what the held turn is making

    record = rows(stored, conversation_id)[2:]
    assert [(role, status) for role, status, _ in record] == [("user", "ok"), ("assistant", "ok")] * 2
    assert [text for role, _, text in record if role == "user"] == [
        "make it snowier",
        "three variations of #2",
    ]
    images = stored.conversation_images(conversation_id)
    assert [image.number for image in images] == [1, 2, 3, 4, 5]
    assert [image.parent_id for image in images[2:]] == [images[1].id] * 3
    assert not [w for w in app.warning if "Interrupted" in w.value]
    assert app.session_state[Keys.CONVERSATION] == conversation_id


def test_while_a_turn_runs_the_page_offers_stop_and_lists_what_waits(
    app: AppTest, stored: Repository, gate: GateBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the browser receives while the held turn runs: its message, Stop, the waiting one."""
    from tests.ui.test_app_chat import _sent_messages

    send(app, FOX)
    conversation_id = app.session_state[Keys.CONVERSATION]
    start_held_turn(gate, conversation_id, "make it snowier")
    sent = _sent_messages(monkeypatch)
    open_later(gate)
    send(app, "a blue boat")

    elements: list[Any] = [
        m.delta.new_element
        for m in sent
        if m.WhichOneof("type") == "delta" and m.delta.WhichOneof("type") == "new_element"
    ]
    buttons = [e.button.label for e in elements if e.WhichOneof("type") == "button"]
    texts = [e.markdown.body for e in elements if e.WhichOneof("type") == "markdown"]
    notes = [
        e.markdown.body
        for e in elements
        if e.WhichOneof("type") == "markdown" and "Waiting" in e.markdown.body
    ]
    assert "Stop" in buttons and "Don't send" in buttons
    assert "make it snowier" in texts and "a blue boat" in texts
    assert notes and notes[0].startswith("Waiting: this runs when the request above is done")
    # and once both are done the page is the record, without the live parts
    assert not [b for b in app.button if b.label in ("Stop", "Don't send")]
    assert [role for role, _, _ in rows(stored, conversation_id)] == ["user", "assistant"] * 3


def test_a_turn_the_server_never_finished_says_so_and_try_again_runs_it(
    app: AppTest, stored: Repository
) -> None:
    from assistant.ui.chat import UNANSWERED_LAST

    send(app, FOX)
    conversation_id = app.session_state[Keys.CONVERSATION]
    stored.add_message(conversation_id, "user", "a lighthouse on a cliff")  # then the server died

    reloaded = AppTest.from_file(str(APP_FILE), default_timeout=TIMEOUT)
    reloaded.query_params["c"] = str(conversation_id)
    reloaded.run()
    assert_ok(reloaded)
    assert UNANSWERED_LAST in captions(reloaded)
    send(reloaded, "try again")
    assert UNANSWERED_LAST not in captions(reloaded)
    lighthouse = stored.conversation_images(conversation_id)[-1]
    assert (lighthouse.number, lighthouse.instruction) == (2, "a lighthouse on a cliff")
