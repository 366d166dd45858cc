"""A database from every schema version Atelier shipped upgrades to head with every row intact.

`tests/storage/test_migrations.py` checks the first release through the Repository API. This
suite is table-driven over *every* revision in `storage/migrations/versions` (a new migration
joins the table by existing), and does not use the current models to write the old data: the
rows are generated from the schema as reflected at that revision, so a future revision that
adds, renames or retypes a column still gets an honest old database. Each column gets a value
of its type, including NULLs where allowed and text that is awkward to store (quotes,
newlines, emoji, percent signs); image rows name real files.

After `open_repository` (the app's own start path) upgrades it, every old value must read back
unchanged, and the record must work: lineage, full-text search, integrity, and a new turn.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, inspect, text

from assistant.core import Assistant
from assistant.runtime import open_repository
from assistant.settings import BackendChoice, Settings
from storage.db import Database
from storage.files import ImageFileStore
from storage.migrations.runner import alembic_config, upgrade_to
from tests.reliability.helpers import images_made, png, turn

SCRIPTS = ScriptDirectory.from_config(alembic_config())
HEAD = SCRIPTS.get_current_head()
#: oldest first; head is included (opening a current database must be a no-op that keeps everything)
REVISIONS = [script.revision for script in reversed(list(SCRIPTS.walk_revisions()))]

#: Text that has broken naive storage somewhere: quotes, SQL and FTS syntax, newlines, emoji, NUL-free.
AWKWARD = 'it\'s a "quoted" 50% café 🦊 — line one\nline two; DROP TABLE images; -- NOT fox*'


@dataclass
class Old:
    """What was written at the old revision, to compare after the upgrade."""

    rows: dict[str, list[dict[str, Any]]]
    image_ids: list[int]
    conversation_ids: list[int]


def _engine(url: str) -> Engine:
    return create_engine(url)


def _value(table: str, column: dict[str, Any], row: int, refs: dict[str, Any]) -> Any:
    """A value for one column of one generated row, by name where meaning matters, else by type."""
    name = column["name"]
    if name in refs:
        return refs[name]
    if column["nullable"] and row % 2 == 1 and not column.get("primary_key"):
        return None  # every nullable column is NULL in odd rows
    kind = str(column["type"]).upper()
    if "JSON" in kind:
        return json.dumps({"table": table, "row": row, "text": AWKWARD, "nested": {"n": [1, 2.5, None]}})
    if "DATETIME" in kind or "TIMESTAMP" in kind:
        return f"2025-0{1 + row % 9}-1{row % 10} 12:34:56.{row:06d}"
    if "INT" in kind:
        return 1000 + row
    if "FLOAT" in kind or "REAL" in kind or "NUMERIC" in kind:
        return 0.125 * (row + 1)
    length = getattr(column["type"], "length", None)
    value = f"{table}.{name} #{row}: {AWKWARD}"
    return value[:length] if length else value


def _insert(engine: Engine, table: str, row: int, refs: dict[str, Any]) -> dict[str, Any]:
    columns = inspect(engine).get_columns(table)
    values = {column["name"]: _value(table, dict(column), row, refs) for column in columns}
    names = ", ".join(values)
    marks = ", ".join(f":{name}" for name in values)
    with engine.begin() as connection:
        connection.execute(text(f"INSERT INTO {table} ({names}) VALUES ({marks})"), values)
    return values


def fill_old_database(url: str, files: ImageFileStore) -> Old:
    """Two conversations with messages, generations (one failed), an edit chain, a mask, inputs."""
    engine = _engine(url)
    rows: dict[str, list[dict[str, Any]]] = {}

    def add(table: str, refs: dict[str, Any]) -> dict[str, Any]:
        listed = rows.setdefault(table, [])
        values = _insert(engine, table, len(listed), refs)
        listed.append(values)
        return values

    conversation_ids: list[int] = []
    image_ids: list[int] = []
    digests = [files.put(png((64, 64), (40 * i, 90, 160))) for i in range(4)]
    mask = files.put(png((64, 64), "white", mode="L"))
    next_id = 1
    for c in range(2):
        conversation = add("conversations", {"id": 10 + c, "title": f"old conversation {c} {AWKWARD[:40]}"})
        cid = conversation["id"]
        conversation_ids.append(cid)
        parent: int | None = None
        for n in range(1, 3):
            user = add("messages", {"id": next_id, "conversation_id": cid, "role": "user", "status": "ok"})
            reply = add(
                "messages",
                {"id": next_id + 1, "conversation_id": cid, "role": "assistant", "status": "ok"},
            )
            failed = add(
                "generations",
                {
                    "id": next_id,
                    "conversation_id": cid,
                    "message_id": reply["id"],
                    "status": "failed",
                    "operation": "generate",
                },
            )
            generation = add(
                "generations",
                {
                    "id": next_id + 1,
                    "conversation_id": cid,
                    "message_id": reply["id"],
                    "status": "ok",
                    "operation": "generate" if parent is None else "edit",
                },
            )
            image = add(
                "images",
                {
                    "id": 100 + next_id,
                    "conversation_id": cid,
                    "message_id": reply["id"],
                    "generation_id": generation["id"],
                    "parent_id": parent,
                    "number": n,
                    "operation": "generate" if parent is None else "edit",
                    "prompt": f"a misty lighthouse on a cliff, version {n}",
                    "instruction": "a misty lighthouse" if parent is None else "make it misty",
                    "sha256": digests[(c * 2 + n - 1) % len(digests)],
                    "mask_sha256": mask if n == 2 else None,
                    "width": 64,
                    "height": 64,
                    "backend": "offline",
                    "seed": 42 + n,
                },
            )
            if parent is not None:
                add(
                    "generation_inputs",
                    {"generation_id": generation["id"], "image_id": parent, "role": "init"},
                )
            del user, failed
            parent = image["id"]
            image_ids.append(image["id"])
            next_id += 2
    engine.dispose()
    return Old(rows, image_ids, conversation_ids)


def read_back(url: str, table: str, columns: list[str]) -> list[dict[str, Any]]:
    engine = _engine(url)
    try:
        with engine.connect() as connection:
            result = connection.execute(text(f"SELECT {', '.join(columns)} FROM {table} ORDER BY rowid"))
            return [dict(row._mapping) for row in result]
    finally:
        engine.dispose()


@pytest.mark.parametrize("revision", REVISIONS)
def test_upgrade_from_every_shipped_revision_keeps_every_row(tmp_path: Path, revision: str) -> None:
    settings = Settings(
        data_dir=tmp_path / "data", backend=BackendChoice.OFFLINE, width=64, height=64, steps=2
    )
    url = settings.effective_database_url
    old_db = Database(url)
    with old_db.engine.connect() as connection:
        upgrade_to(connection, revision)
    old_db.dispose()
    old = fill_old_database(url, ImageFileStore(settings.images_dir))
    assert read_back(url, "alembic_version", ["version_num"]) == [{"version_num": revision}]

    repo = open_repository(settings)  # what the app does on start: upgrade, then use
    assert read_back(url, "alembic_version", ["version_num"]) == [{"version_num": HEAD}]
    for table, written in old.rows.items():
        assert read_back(url, table, list(written[0])) == written, f"{table} changed in the upgrade"

    # the upgraded record works: lineage, search (FTS kept by triggers), files, numbering
    chain = repo.lineage_tree(old.image_ids[1])
    assert [node.image.id for node in chain] == old.image_ids[:2]
    assert {i.id for i in repo.search_images("misty lighthouse")} == set(old.image_ids)
    assert repo.check_integrity().ok
    conversation_id = old.conversation_ids[0]
    events = turn(Assistant(settings, repo), conversation_id, "make #2 darker")
    (made,) = images_made(events)
    assert made.number == 3 and made.parent_id == old.image_ids[1]
    for table, written in old.rows.items():  # and the new turn changed no old row
        columns = [name for name in written[0] if (table, name) != ("conversations", "updated_at")]
        expected = [{name: row[name] for name in columns} for row in written]
        assert read_back(url, table, columns)[: len(written)] == expected, table
    repo.db.dispose()
