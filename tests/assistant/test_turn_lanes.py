"""Turns run in their conversation's lane: in order, whatever the page that sent them does.

A gate backend (the offline renderer behind a door the test opens) holds a turn mid-run, so
the test can send more messages, stop it, or walk away while it runs, then check what the
record says: every message answered once, in the order sent, the second turn working on the
first turn's image.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from assistant.core import Assistant
from assistant.events import Failed, ImageReady, PlanMade, Reply
from assistant.settings import Settings
from assistant.turn_lanes import LiveTurn, TurnLane, TurnLanes
from storage.repository import Repository
from tools.base import CancelToken
from tools.offline import OfflineBackend

WAIT = 30.0


class GateBackend(OfflineBackend):
    """The offline renderer, which waits at the gate before drawing (Stop works while it waits)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.waiting = threading.Event()
        self.calls = 0

    def run(self, request: Any, progress: Any = None, cancel: CancelToken | None = None) -> Any:
        self.calls += 1
        self.waiting.set()
        while not self.gate.wait(0.01):
            if cancel is not None and cancel.cancelled:
                break
        return super().run(request, progress, cancel)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", backend="offline", width=128, height=128, steps=4)


@pytest.fixture
def repo(settings: Settings) -> Repository:
    from assistant.runtime import open_repository

    return open_repository(settings)


def live(settings: Settings, repo: Repository, text: str, backend: OfflineBackend | None = None) -> LiveTurn:
    return LiveTurn(assistant=Assistant(settings, repo, backend=backend or OfflineBackend()), text=text)


def finished(turn: LiveTurn) -> list[Any]:
    assert turn.wait(WAIT), f"{turn.text!r} did not finish"
    events, done = turn.events_after(0, timeout=0)
    assert done
    return events


def stored(repo: Repository, conversation_id: int) -> list[tuple[str, str, str]]:
    return [(m.role, m.status, m.content) for m in repo.messages(conversation_id)]


def test_a_message_sent_while_a_turn_runs_waits_and_then_works_on_its_result(
    settings: Settings, repo: Repository
) -> None:
    lanes = TurnLanes()
    gate = GateBackend()
    first = live(settings, repo, "a cozy cabin at night", gate)
    lane = lanes.submit("db", None, first)
    assert gate.waiting.wait(WAIT)  # the cabin is mid-render
    second = live(settings, repo, "make it snowier")
    assert lanes.submit("db", None, second, new_lane=lane) is lane  # the sender's own new chat
    assert first.started and not second.started and lane.waiting == [second]
    assert first.started_at is not None and second.started_at is None  # watchers count from here
    assert not first.finished

    gate.gate.set()
    first_events, second_events = finished(first), finished(second)
    assert isinstance(first_events[-1], Reply) and isinstance(second_events[-1], Reply)
    conversation_id = first_events[0].conversation_id
    assert second_events[0].conversation_id == conversation_id  # the same conversation
    assert [(role, status) for role, status, _ in stored(repo, conversation_id)] == [
        ("user", "ok"),
        ("assistant", "ok"),
        ("user", "ok"),
        ("assistant", "ok"),
    ]
    cabin, snowier = repo.conversation_images(conversation_id)
    assert snowier.parent_id == cabin.id  # "it" was the cabin the first turn made
    assert not lane.busy and lanes.busy() == []


def test_each_turn_knows_what_was_stored_before_it_began(settings: Settings, repo: Repository) -> None:
    """A page draws the record up to `shown_after` and the running turn live under it."""
    lanes = TurnLanes()
    first = live(settings, repo, "a red fox in the snow")
    lanes.submit("db", None, first)
    assert first.shown_after == 0  # a new conversation: nothing before it
    finished(first)
    conversation_id = repo.list_conversations()[0].id
    before = repo.messages(conversation_id)[-1].id
    gate = GateBackend()
    second = live(settings, repo, "make it darker", gate)
    lane = lanes.submit("db", conversation_id, second)
    assert gate.waiting.wait(WAIT)
    assert second.shown_after == before
    assert [m.id > before for m in repo.messages(conversation_id)] == [False, False, True]  # its message
    assert lanes.find("db", conversation_id) is lane  # another session (a reload) finds it
    assert lanes.find("another db", conversation_id) is None
    gate.gate.set()
    finished(second)
    assert lanes.find("db", conversation_id) is None


def test_stop_ends_the_running_turn_as_stopped_and_the_next_one_still_runs(
    settings: Settings, repo: Repository
) -> None:
    lanes = TurnLanes()
    start = live(settings, repo, "a lighthouse on a cliff")
    lane = lanes.submit("db", None, start)
    finished(start)
    conversation_id = lane.conversation_id
    assert conversation_id is not None
    gate = GateBackend()
    running = live(settings, repo, "make it stormy", gate)
    lanes.submit("db", conversation_id, running)
    waiting = live(settings, repo, "a red boat")
    lanes.submit("db", conversation_id, waiting)
    assert gate.waiting.wait(WAIT)

    running.stop()
    events = finished(running)
    assert isinstance(events[-1], Failed) and events[-1].cancelled
    assert isinstance(finished(waiting)[-1], Reply)
    rows = stored(repo, conversation_id)[2:]
    assert [(role, status) for role, status, _ in rows] == [
        ("user", "ok"),
        ("assistant", "cancelled"),
        ("user", "ok"),
        ("assistant", "ok"),
    ]
    assert rows[1][2].startswith("Cancelled: you stopped this request")
    assert [image.operation for image in repo.conversation_images(conversation_id)] == [
        "generate",
        "generate",
    ]


def test_a_waiting_message_taken_back_is_never_sent(settings: Settings, repo: Repository) -> None:
    gate = GateBackend()
    lane = TurnLane("db", None)
    running = live(settings, repo, "a quiet harbour", gate)
    lane.submit(running)
    regret = live(settings, repo, "make it pink")
    lane.submit(regret)
    assert gate.waiting.wait(WAIT)
    assert lane.remove(regret) and regret.finished and regret.assistant is None
    assert not lane.remove(running)  # started: only Stop can end it
    gate.gate.set()
    finished(running)
    conversation_id = lane.conversation_id
    assert conversation_id is not None
    contents = [content for _, _, content in stored(repo, conversation_id)]
    assert contents[0] == "a quiet harbour" and "make it pink" not in contents
    assert gate.calls == 1


def test_a_turn_nobody_watches_still_finishes_and_lets_go_of_its_assistant(
    settings: Settings, repo: Repository
) -> None:
    """The page that sent it went away (another page, a reload): the record still gets the image."""
    turn = live(settings, repo, "a castle in the clouds")
    TurnLanes().submit("db", None, turn)
    assert turn.wait(WAIT)
    assert turn.assistant is None
    (conversation,) = repo.list_conversations()
    assert [(role, status) for role, status, _ in stored(repo, conversation.id)] == [
        ("user", "ok"),
        ("assistant", "ok"),
    ]
    assert len(repo.conversation_images(conversation.id)) == 1


def test_a_watcher_sees_every_event_once_in_order_even_when_it_comes_late(
    settings: Settings, repo: Repository
) -> None:
    turn = live(settings, repo, "two pictures of a fox in the snow")
    TurnLanes().submit("db", None, turn)
    seen: list[Any] = []
    done = False
    while not done:
        events, done = turn.events_after(len(seen), timeout=1.0)
        seen.extend(events)
    assert isinstance(seen[0], PlanMade) and isinstance(seen[-1], Reply)
    assert len([e for e in seen if isinstance(e, ImageReady)]) == 2
    assert turn.events_after(0, timeout=0) == (seen, True)


def test_a_bug_below_the_lane_fails_that_turn_only(settings: Settings, repo: Repository) -> None:
    class Exploding(Assistant):
        def respond(self, *args: Any, **kwargs: Any) -> Any:
            yield from super().respond(*args, **kwargs)
            raise RuntimeError("after the reply")

    lane = TurnLane("db", None)
    first = LiveTurn(assistant=Exploding(settings, repo, backend=OfflineBackend()), text="a fox")
    second = live(settings, repo, "make it red")
    lane.submit(first)
    lane.submit(second)
    events = finished(first)
    assert isinstance(events[-1], Failed)
    assert events[-1].message == "Something went wrong (RuntimeError); nothing was lost, please try again."
    assert isinstance(finished(second)[-1], Reply)
