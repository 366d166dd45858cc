"""A child process that runs chat turns forever (until killed), for crash and load tests.

Usage: python -m tests.reliability.turn_worker DATA_DIR LABEL [TURNS]
Each turn generates or edits in the worker's own conversation, so a kill can land in any
phase: planning, rendering, file write, commit.
"""

from __future__ import annotations

import sys
from pathlib import Path

from assistant.core import Assistant
from assistant.events import Failed, ImageReady
from assistant.runtime import open_repository
from assistant.settings import Settings

PROMPTS = ["a red fox in the snow", "make it snowier", "a small house by a lake", "make it darker"]


def main() -> None:
    data_dir, label = Path(sys.argv[1]), sys.argv[2]
    turns = int(sys.argv[3]) if len(sys.argv) > 3 else 10**9
    settings = Settings(data_dir=data_dir, backend="offline", width=96, height=96, steps=2)
    assistant = Assistant(settings, open_repository(settings))
    conversation_id = assistant.repo.create_conversation(f"worker {label}").id
    print(f"conversation {conversation_id}", flush=True)
    for turn in range(turns):
        text = f"{PROMPTS[turn % len(PROMPTS)]} ({label} turn {turn})"
        for event in assistant.respond(conversation_id, text):
            if isinstance(event, Failed):
                print(f"FAILED {event.message}", flush=True)
                sys.exit(3)
            if isinstance(event, ImageReady):
                print(f"image {event.number}", flush=True)


if __name__ == "__main__":
    main()
