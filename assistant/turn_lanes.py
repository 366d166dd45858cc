"""Turns that outlive the page that asked for them, run one after another per conversation.

Streamlit reruns the page script whenever the user does anything (sends a message, clicks a
button, opens the History page, reloads), and a rerun stops the script where it is. A turn
driven by the script itself died with it: a render thrown away at step 20 of 25, an OpenAI
image paid for and never stored, a second message that silently cancelled the first. So each
conversation gets a lane: a thread that runs its turns in the order they were sent. Pages only
watch a lane; they may be rerun, reloaded or left meanwhile, and a message sent while a turn
runs waits in the lane instead of stopping it. Only Stop (`LiveTurn.stop`) stops a turn.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from assistant.core import Assistant, Attachment
from assistant.events import Event, Failed
from storage.db import StorageError

log = logging.getLogger(__name__)

_numbers = itertools.count(1)


@dataclass(eq=False)
class LiveTurn:
    """One message on its way through a lane, and what its turn has reported so far."""

    #: the turn's own Assistant (its cancel token); let go once the turn is over, so a finished
    #: turn a page still holds does not keep a local model's weights alive
    assistant: Assistant | None
    text: str
    attachments: tuple[Attachment, ...] = ()
    #: what the user attached, as the chat shows it under their message ("image cat.png")
    labels: tuple[str, ...] = ()
    #: unique in this process: widget keys and "remove this waiting message" use it
    number: int = field(default_factory=lambda: next(_numbers))
    #: the conversation's messages up to this id were there before the turn began, so a page
    #: drawing the record above the live turn shows those and not this turn's half-written rows;
    #: None while the turn waits
    shown_after: int | None = None
    #: `time.monotonic()` when the turn began, so every watcher counts from the same moment
    started_at: float | None = None
    _events: list[Event] = field(default_factory=list)
    _finished: bool = False
    _stop_requested: bool = False
    _changed: threading.Condition = field(default_factory=threading.Condition)

    @property
    def started(self) -> bool:
        return self.shown_after is not None

    @property
    def finished(self) -> bool:
        with self._changed:
            return self._finished

    @property
    def stop_requested(self) -> bool:
        return self._stop_requested

    def stop(self) -> None:
        """Ask the running turn to stop between steps; it ends as cancelled, on the record."""
        self._stop_requested = True
        assistant = self.assistant
        if assistant is not None:
            assistant.cancel_token.cancel()

    def events_after(self, seen: int, timeout: float) -> tuple[list[Event], bool]:
        """The events past the first `seen`, waiting up to `timeout` for one; and whether that is all.

        "All" is only said with the last events, so a watcher that stops on it has drawn the end.
        """
        with self._changed:
            if len(self._events) <= seen and not self._finished:
                self._changed.wait(timeout)
            return self._events[seen:], self._finished

    def wait(self, timeout: float) -> bool:
        """Wait until the turn has finished; False when `timeout` ran out first."""
        with self._changed:
            return self._changed.wait_for(lambda: self._finished, timeout)

    def _report(self, event: Event) -> None:
        with self._changed:
            self._events.append(event)
            self._changed.notify_all()

    def _finish(self) -> None:
        with self._changed:
            self._finished = True
            self.assistant = None
            self._changed.notify_all()


class TurnLane:
    """One conversation's turns, run in order in a thread of the lane's own.

    A lane for a new conversation starts without an id and takes the one its first turn
    creates, so messages sent before that turn reports anything still land in the same
    conversation.
    """

    def __init__(self, store: str, conversation_id: int | None) -> None:
        self.store = store
        self._conversation_id = conversation_id
        self._lock = threading.Lock()
        self._current: LiveTurn | None = None
        self._waiting: deque[LiveTurn] = deque()

    @property
    def conversation_id(self) -> int | None:
        with self._lock:
            return self._conversation_id

    @property
    def current(self) -> LiveTurn | None:
        with self._lock:
            return self._current

    @property
    def waiting(self) -> list[LiveTurn]:
        with self._lock:
            return list(self._waiting)

    @property
    def busy(self) -> bool:
        with self._lock:
            return self._current is not None

    def submit(self, turn: LiveTurn) -> LiveTurn:
        """Run `turn` after those sent before it; returns it, to be watched."""
        with self._lock:
            self._waiting.append(turn)
            if self._current is not None:
                return turn
            self._start_next()
        threading.Thread(target=self._run, name="atelier-turn", daemon=True).start()
        return turn

    def remove(self, turn: LiveTurn) -> bool:
        """Take a waiting message back out of the lane; False once it has started."""
        with self._lock:
            if turn in self._waiting:
                self._waiting.remove(turn)
                turn._finish()
                return True
            return False

    def _start_next(self) -> None:
        """Make the next waiting turn current (with `_lock` held), before anyone can see it."""
        self._current = self._waiting.popleft() if self._waiting else None
        if self._current is not None:
            self._current.shown_after = self._last_message_id(self._current.assistant)
            self._current.started_at = time.monotonic()

    def _last_message_id(self, assistant: Assistant | None) -> int:
        if self._conversation_id is None or assistant is None:
            return 0
        try:
            last = assistant.repo.messages(self._conversation_id, limit=1)
        except StorageError:
            return 0
        return last[-1].id if last else 0

    def _run(self) -> None:
        while True:
            with self._lock:
                turn = self._current
            if turn is None:
                return
            self._run_turn(turn)
            with self._lock:
                self._start_next()
            turn._finish()  # after the next turn is current: a watcher that reruns sees that one

    def _run_turn(self, turn: LiveTurn) -> None:
        assistant = turn.assistant
        if assistant is None:  # taken back out of the lane (`remove`) as it was about to start
            return
        conversation_id = self.conversation_id
        events = assistant.respond(conversation_id, turn.text, turn.attachments)
        try:
            for event in events:
                if event.conversation_id and conversation_id is None:
                    conversation_id = event.conversation_id
                    with self._lock:
                        self._conversation_id = conversation_id
                turn._report(event)
                if turn.stop_requested:  # Stop pressed before the turn had made its cancel token
                    assistant.cancel_token.cancel()
        except Exception as exc:  # a bug below the lane: the turn says so and the lane goes on
            log.exception("turn failed unexpectedly")
            turn._report(
                Failed(
                    conversation_id or 0,
                    f"Something went wrong ({type(exc).__name__}); nothing was lost, please try again.",
                )
            )
        finally:
            close = getattr(events, "close", None)
            if close is not None:
                close()


class TurnLanes:
    """Every busy lane of this process, found by the conversation it runs in.

    Any page of any session finds a conversation's running turn here, so a reload or a second
    tab shows it running instead of starting a second turn beside it. `store` tells databases
    apart (their conversation ids overlap).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lanes: list[TurnLane] = []

    def find(self, store: str, conversation_id: int) -> TurnLane | None:
        """The busy lane of this conversation, if a turn runs or waits in it."""
        with self._lock:
            self._lanes = [lane for lane in self._lanes if lane.busy]
            for lane in self._lanes:
                if lane.store == store and lane.conversation_id == conversation_id:
                    return lane
            return None

    def submit(
        self,
        store: str,
        conversation_id: int | None,
        turn: LiveTurn,
        *,
        new_lane: TurnLane | None = None,
    ) -> TurnLane:
        """Send `turn` into its conversation's lane (a new one when none is busy).

        With no conversation yet, `new_lane` is the lane the sender's previous message started
        (still waiting for its conversation id), so "a fox" then "make it red" stay together.
        """
        with self._lock:
            self._lanes = [lane for lane in self._lanes if lane.busy]
            lane = next(
                (
                    lane
                    for lane in self._lanes
                    if lane.store == store
                    and (
                        lane.conversation_id == conversation_id
                        if conversation_id is not None
                        else lane is new_lane
                    )
                ),
                None,
            )
            if lane is None:
                lane = TurnLane(store, conversation_id)
                self._lanes.append(lane)
            lane.submit(turn)
            return lane

    def busy(self) -> Sequence[TurnLane]:
        with self._lock:
            return [lane for lane in self._lanes if lane.busy]
