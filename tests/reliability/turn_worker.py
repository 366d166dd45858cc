"""A child process that runs chat turns forever (until killed), for crash and load tests.

Usage: python -m tests.reliability.turn_worker DATA_DIR LABEL [TURNS]
Each turn generates or edits in the worker's own conversation, so a kill can land in any
phase: planning, rendering, file write, commit.

ATELIER_TEST_KILL_AT=<point>[:<n>] makes the worker SIGKILL itself the n-th time (default 1st)
a turn's image write reaches <point>, after printing `kill-point <point>`:

* before-rename: the temp file is written and fsynced, not yet renamed into the store;
* after-rename: the file is in the store under its hash, its row not yet committed;
* after-commit: the turn's transaction has committed, its pending markers not yet cleared.

The variable is read here, by the test worker, never by Atelier itself.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from sqlalchemy import event

from assistant.core import Assistant
from assistant.events import Failed, ImageReady
from assistant.runtime import open_repository
from assistant.settings import BackendChoice, Settings
from storage.files import STEP_RENAMED, STEP_TEMP_WRITTEN
from storage.repository import Repository

PROMPTS = ["a red fox in the snow", "make it snowier", "a small house by a lake", "make it darker"]
KILL_POINTS = ("before-rename", "after-rename", "after-commit")


def install_kill_point(repo: Repository, spec: str) -> None:
    point, _, nth = spec.partition(":")
    if point not in KILL_POINTS:
        raise SystemExit(f"unknown kill point {point!r}; choose one of {', '.join(KILL_POINTS)}")
    wanted = int(nth or "1")
    reached = 0
    image_written = False

    def arrive() -> None:
        nonlocal reached
        reached += 1
        if reached == wanted:
            print(f"kill-point {point}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

    def on_step(step: str) -> None:
        nonlocal image_written
        if step == STEP_RENAMED:
            image_written = True
        if (point, step) in (("before-rename", STEP_TEMP_WRITTEN), ("after-rename", STEP_RENAMED)):
            arrive()

    def on_commit(_session: Any) -> None:  # inside commit, before Database.write clears markers
        nonlocal image_written
        if point == "after-commit" and image_written:
            image_written = False
            arrive()

    repo.files.fault_hook = on_step
    event.listen(repo.db._write_sessions, "after_commit", on_commit)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)  # so a logged failure shows
    data_dir, label = Path(sys.argv[1]), sys.argv[2]
    turns = int(sys.argv[3]) if len(sys.argv) > 3 else 10**9
    settings = Settings(data_dir=data_dir, backend=BackendChoice.OFFLINE, width=96, height=96, steps=2)
    assistant = Assistant(settings, open_repository(settings))
    kill_at = os.environ.get("ATELIER_TEST_KILL_AT")
    if kill_at:
        install_kill_point(assistant.repo, kill_at)
    conversation_id = assistant.repo.create_conversation(f"worker {label}").id
    print(f"conversation {conversation_id}", flush=True)
    for turn in range(turns):
        text = f"{PROMPTS[turn % len(PROMPTS)]} ({label} turn {turn})"
        for event_ in assistant.respond(conversation_id, text):
            if isinstance(event_, Failed):
                print(f"FAILED {event_.message}", flush=True)
                sys.exit(3)
            if isinstance(event_, ImageReady):
                print(f"image {event_.number}", flush=True)


if __name__ == "__main__":
    main()
