"""Stopping a turn half way: the three ways a user does it, met on the tiny diffusers pipeline.

* the Streamlit page reruns (the user pressed Stop or sent another message): the event stream
  is closed while the backend is between steps;
* Ctrl-C in `atelier chat` (a KeyboardInterrupt in the main thread);
* the cancel token (tested with the other backend faults in test_backend_faults.py).

Every way ends with the turn in the record as *cancelled* (not failed): the user's words, a
reply saying it was stopped, a cancelled `generations` row, no image; the next turn works.
"""

from __future__ import annotations

import _thread
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from assistant.events import Event, Failed, Progress
from assistant.runtime import open_repository
from assistant.settings import Settings
from tests.reliability.helpers import (
    assert_failed_turn,
    assert_nothing_lost,
    assert_usable,
    images_made,
    progress_steps,
    snapshot,
    turn,
)
from tests.reliability.test_backend_faults import diffusers_assistant, unet_hook

STOPPED = "Cancelled: you stopped this request before it finished, so no image was made."
INTERRUPTED = (
    "Interrupted before it finished (what was running it stopped), so no image was made. "
    "Say “try again” to run it again."
)


@pytest.mark.slow
def test_a_rerun_that_closes_the_turn_mid_run_records_it_as_cancelled(
    tmp_path: Path, tiny_model: Path
) -> None:
    assistant = diffusers_assistant(tmp_path / "data", tiny_model)
    conversation_id = turn(assistant, None, "a red fox in the snow")[0].conversation_id
    repo = assistant.repo
    before = snapshot(repo)
    step_two = threading.Event()

    def hold_step_two(call: int) -> None:
        if call == 2:
            assert step_two.wait(30), "the renderer never went away"

    events: list[Event] = []
    with unet_hook(assistant, hold_step_two):
        stream = assistant.respond(conversation_id, "a blue bird on a branch")
        for event in stream:
            events.append(event)
            if isinstance(event, Progress) and event.step == 1:
                step_two.set()
                stream.close()  # a renderer that stops reading mid-turn
                break

    assert progress_steps(events) == [(1, 4)]
    assert_failed_turn(
        repo,
        before,
        conversation_id,
        "a blue bird on a branch",
        INTERRUPTED,
        generation="cancelled",
        status="cancelled",
    )
    assert_nothing_lost(before, repo, conversations_touched={conversation_id})
    assert_usable(assistant, conversation_id)


@pytest.mark.slow
def test_ctrl_c_mid_run_stops_between_steps_and_says_so(tmp_path: Path, tiny_model: Path) -> None:
    assistant = diffusers_assistant(tmp_path / "data", tiny_model)
    conversation_id = turn(assistant, None, "a red fox in the snow")[0].conversation_id
    repo = assistant.repo
    before = snapshot(repo)

    def ctrl_c_at_step_two(call: int) -> None:
        if call == 2:
            _thread.interrupt_main()  # SIGINT, delivered to the main thread as in a terminal

    with unet_hook(assistant, ctrl_c_at_step_two):
        events = turn(assistant, conversation_id, "a blue bird on a branch")

    stop = events[-1]
    assert isinstance(stop, Failed) and stop.cancelled and stop.message == STOPPED
    assert images_made(events) == []
    assert_failed_turn(
        repo,
        before,
        conversation_id,
        "a blue bird on a branch",
        STOPPED,
        generation="cancelled",
        status="cancelled",
    )
    assert_usable(assistant, conversation_id)


def _atelier() -> str:
    script = Path(sys.executable).with_name("atelier")
    found = str(script) if script.exists() else shutil.which("atelier")
    assert found is not None, "the `atelier` console script is not installed"
    return found


@pytest.mark.slow
def test_ctrl_c_in_atelier_chat_exits_130_with_the_turn_recorded_as_cancelled(
    tmp_path: Path, tiny_model: Path
) -> None:
    data_dir = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ATELIER_", "OPENAI_"))}
    env.update(
        ATELIER_DATA_DIR=str(data_dir),
        ATELIER_BACKEND="diffusers",
        ATELIER_DIFFUSERS_MODEL=str(tiny_model),
        ATELIER_WIDTH="256",
        ATELIER_HEIGHT="256",
        ATELIER_STEPS="150",  # the most there is: the signal lands while it runs
        HF_HUB_OFFLINE="1",
    )
    process = subprocess.Popen(
        [_atelier(), "chat", "--json", "a lighthouse on a cliff"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert process.stdout is not None
    lines: list[dict[str, object]] = []
    for line in process.stdout:
        lines.append(json.loads(line))
        if lines[-1]["event"] == "progress":
            process.send_signal(signal.SIGINT)
            break
    rest, stderr = process.communicate(timeout=120)
    lines += [json.loads(line) for line in rest.splitlines()]

    assert process.returncode == 130, (stderr, lines[-3:])
    assert "Traceback" not in stderr
    assert lines[-1]["event"] == "error" and lines[-1]["cancelled"] is True
    assert lines[-1]["message"] == STOPPED
    steps = [line["step"] for line in lines if line["event"] == "progress"]
    assert steps and max(steps) < 150  # type: ignore[type-var]

    repo = open_repository(Settings(data_dir=data_dir))
    (conversation,) = repo.list_conversations()
    messages = repo.messages(conversation.id)
    assert [(m.role, m.status, m.content) for m in messages] == [
        ("user", "ok", "a lighthouse on a cliff"),
        ("assistant", "cancelled", STOPPED),
    ]
    assert [g.status for g in repo.generations(conversation.id)] == ["cancelled"]
    assert repo.conversation_images(conversation.id) == []


class _HoldAtStepTwo:
    """The offline backend, whose second step waits for the cancel (a slow model, made certain)."""

    def __init__(self) -> None:
        from tools.offline import OfflineBackend

        self.inner = OfflineBackend()
        self.name, self.model, self.capabilities = self.inner.name, self.inner.model, self.inner.capabilities

    def estimate_cost(self, request: object) -> float:
        return 0.0

    def run(self, request, progress=None, cancel=None):  # type: ignore[no-untyped-def]
        def held(step: int, total: int) -> None:
            if progress is not None:
                progress(step, total)
            if step == 1 and cancel is not None:
                assert cancel.wait(10), "Ctrl-C never stopped the turn"

        return self.inner.run(request, held, cancel)


def test_ctrl_c_while_the_cli_prints_an_event_stops_the_turn_and_says_so(tmp_path: Path) -> None:
    """SIGINT lands where the main thread is: often in the turn's wait for the backend (tested
    above), sometimes in the middle of printing a progress line. Both end the same way."""
    from assistant.cli import _show_events
    from assistant.core import Assistant

    settings = Settings(data_dir=tmp_path, backend="offline", width=128, height=128, steps=8)
    assistant = Assistant(settings, open_repository(settings), backend=_HoldAtStepTwo())
    printed: list[str] = []
    interrupted = False

    def print_events(events: Iterator[Event]) -> None:
        nonlocal interrupted
        for event in events:
            if isinstance(event, Progress) and not interrupted:
                interrupted = True
                raise KeyboardInterrupt  # Ctrl-C while this line is being printed
            printed.append(event.kind)

    failure = _show_events(
        assistant.respond(None, "a lighthouse on a cliff"),
        print_events,
        on_ctrl_c=lambda: assistant.cancel_token.cancel(),
    )
    assert failure is not None and failure.cancelled and failure.message == STOPPED
    assert printed[-1] == "error"
    repo = assistant.repo
    (conversation,) = repo.list_conversations()
    assert [(m.status, m.content) for m in repo.messages(conversation.id)][-1] == ("cancelled", STOPPED)
    assert repo.conversation_images(conversation.id) == []


def test_the_terminal_says_a_stop_once_without_a_doubled_prefix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from assistant.cli import _render_events
    from assistant.core import Assistant

    settings = Settings(data_dir=tmp_path, backend="offline", width=128, height=128, steps=8)
    assistant = Assistant(settings, open_repository(settings), backend=_HoldAtStepTwo())

    def stop_at_the_first_step(events: Iterator[Event]) -> Iterator[Event]:
        for event in events:
            if isinstance(event, Progress):
                assistant.cancel_token.cancel()  # what Ctrl-C does
            yield event

    _render_events(stop_at_the_first_step(assistant.respond(None, "a lighthouse on a cliff")))
    said = " ".join(capsys.readouterr().err.split())
    assert STOPPED in said and "Stopped: Cancelled" not in said and "Error" not in said, said
