"""What every reliability test checks after a fault, in one place.

A fault is handled when three things hold, and each test asserts all three:

1. the user reads one clear line (no traceback, no Python repr, no key), as the Failed or
   Reply event the UI and the CLI render;
2. the database says what happened: the turn is stored as failed with its reason in
   `messages.status` / `plan["error"]`, with a failed `generations` row when a backend was
   called, and nothing stored before is lost or half-written (rows identical, files present
   with the right hash, numbers gap-free);
3. the conversation goes on: the next turn makes an image.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image as PILImage
from sqlalchemy import text

from assistant.core import Assistant, Attachment
from assistant.events import Event, Failed, ImageReady, Progress, Reply
from storage.repository import Repository

#: What a message meant for a person must never contain.
_NOT_FOR_PEOPLE = re.compile(
    r"Traceback|File \"|<[\w.]+ object at 0x|\b[A-Z]\w*(Error|Exception)\(|sk-[A-Za-z0-9]{4}|Bearer "
)


def turn(
    assistant: Assistant, conversation_id: int | None, text: str, attachments: Sequence[Attachment] = ()
) -> list[Event]:
    """One turn as a renderer sees it; every event must survive `to_dict` → JSON (the CLI's --json)."""
    events = list(assistant.respond(conversation_id, text, attachments))
    for event in events:
        json.dumps(event.to_dict())
    assert events and isinstance(events[-1], Reply | Failed), events
    return events


def assert_clear_message(message: str, *fragments: str) -> None:
    """One line a person can act on: short, punctuated, no traceback, no repr, no key."""
    assert message == message.strip() and message, repr(message)
    assert "\n" not in message, repr(message)
    assert len(message) <= 400, repr(message)
    assert message[-1] in ".?!", repr(message)
    assert not _NOT_FOR_PEOPLE.search(message), repr(message)
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def failed(events: Sequence[Event]) -> Failed:
    """The turn's Failed event (it must be the last one, with no image before it)."""
    last = events[-1]
    assert isinstance(last, Failed), events
    assert not [e for e in events if isinstance(e, ImageReady)], events
    return last


def replied(events: Sequence[Event]) -> Reply:
    last = events[-1]
    assert isinstance(last, Reply), events
    return last


def images_made(events: Iterable[Event]) -> list[ImageReady]:
    return [e for e in events if isinstance(e, ImageReady)]


def progress_steps(events: Iterable[Event]) -> list[tuple[int, int]]:
    return [(e.step, e.total) for e in events if isinstance(e, Progress)]


# ----- the database before and after ---------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """Every row of the record, keyed by id, as raw column values (JSON as stored)."""

    tables: dict[str, dict[Any, tuple[Any, ...]]]

    def ids(self, table: str) -> set[Any]:
        return set(self.tables[table])

    def rows(self, table: str) -> dict[Any, tuple[Any, ...]]:
        return self.tables[table]


TABLES = {
    "conversations": "id",
    "messages": "id",
    "generations": "id",
    "images": "id",
    "generation_inputs": "generation_id, image_id, role",
}


def snapshot(repo: Repository) -> Snapshot:
    tables: dict[str, dict[Any, tuple[Any, ...]]] = {}
    with repo.db.engine.connect() as connection:
        for table, key in TABLES.items():
            rows = connection.execute(text(f"SELECT {key}, * FROM {table}")).all()
            width = key.count(",") + 1
            tables[table] = {
                (tuple(row[:width]) if width > 1 else row[0]): tuple(row[width:]) for row in rows
            }
    return Snapshot(tables)


def assert_nothing_lost(before: Snapshot, repo: Repository, *, conversations_touched: set[int]) -> Snapshot:
    """Rows stored before are all still there, unchanged; files and numbers are intact.

    Conversations the turn wrote to may have a newer `updated_at`; nothing else may differ.
    """
    after = snapshot(repo)
    for table, rows in before.tables.items():
        for key, row in rows.items():
            assert key in after.tables[table], f"{table} row {key} disappeared"
            if table == "conversations" and key in conversations_touched:
                assert after.tables[table][key][:2] == row[:2]  # id, title; updated_at may move
                continue
            assert after.tables[table][key] == row, f"{table} row {key} changed"
    report = repo.check_integrity()
    assert report.ok, report
    with repo.db.engine.connect() as connection:
        numbers: dict[int, list[int]] = {}
        for conversation_id, number in connection.execute(
            text("SELECT conversation_id, number FROM images ORDER BY conversation_id, number")
        ):
            numbers.setdefault(conversation_id, []).append(number)
        assert connection.execute(text("PRAGMA integrity_check")).scalar() == "ok"
    for listed in numbers.values():
        assert listed == list(range(1, len(listed) + 1)), listed
    return after


def new_rows(before: Snapshot, after: Snapshot, table: str) -> list[tuple[Any, ...]]:
    """Rows added since `before`, oldest first."""
    rows = after.rows(table)
    return [rows[key] for key in sorted(set(rows) - set(before.rows(table)))]


def new_messages(repo: Repository, before: Snapshot, conversation_id: int) -> list[Any]:
    return [m for m in repo.messages(conversation_id) if m.id not in before.ids("messages")]


def new_generations(repo: Repository, before: Snapshot, conversation_id: int) -> list[Any]:
    return [g for g in repo.generations(conversation_id) if g.id not in before.ids("generations")]


def assert_failed_turn(
    repo: Repository,
    before: Snapshot,
    conversation_id: int,
    user_text: str,
    message: str,
    *,
    generation: str | None,
    status: str = "failed",
) -> None:
    """The turn is on record: the user's words, then an assistant reply marked failed with its reason.

    `status`: the reply's status, "cancelled" for a turn the user stopped.

    `generation`: the status of the one new `generations` row ("failed", "cancelled"), or None
    when no backend was called (then there must be no new row).
    """
    messages = new_messages(repo, before, conversation_id)
    assert [(m.role, m.status) for m in messages] == [("user", "ok"), ("assistant", status)], [
        (m.role, m.status, m.content) for m in messages
    ]
    assert messages[0].content == user_text
    assert messages[1].content == message
    assert messages[1].plan is not None and messages[1].plan["error"] == message
    generations = new_generations(repo, before, conversation_id)
    if generation is None:
        assert generations == [], [(g.status, g.error) for g in generations]
        return
    assert [(g.status, g.error) for g in generations] == [(generation, message)]
    assert generations[0].message_id == messages[1].id  # the call belongs to the failed reply
    assert generations[0].duration_ms is not None


def assert_usable(
    assistant: Assistant, conversation_id: int, text: str = "a small red boat on a lake"
) -> int:
    """The next turn in the same conversation makes an image with the next number."""
    numbers = [i.number for i in assistant.repo.conversation_images(conversation_id)]
    events = turn(assistant, conversation_id, text)
    made = images_made(events)
    assert isinstance(events[-1], Reply), events
    assert made and made[0].number == (max(numbers) + 1 if numbers else 1), (numbers, made)
    assert all(e.conversation_id == conversation_id for e in events)
    return made[0].number


# ----- files ------------------------------------------------------------------------------------


def png(
    size: tuple[int, int] = (64, 64), color: tuple[int, int, int] | str = (90, 140, 200), mode: str = "RGB"
) -> bytes:
    buffer = io.BytesIO()
    PILImage.new(mode, size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def encode(image: PILImage.Image, fmt: str = "PNG", **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def files_outside(root: Path, inside: Path) -> set[Path]:
    """Every file under `root` that is not under `inside` (to catch a write through `../`)."""
    return {p for p in root.rglob("*") if p.is_file() and inside not in p.parents}
