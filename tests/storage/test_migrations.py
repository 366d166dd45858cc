"""The schema comes from the migrations; the models must describe exactly that schema.

A drift between the two shows up for users as a crash on the first query of a new column, or
a column the app never fills; opening is also what two processes do at the same moment.
"""

from __future__ import annotations

import multiprocessing
import threading
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, text

from storage.db import Database, StorageError
from storage.files import ImageFileStore
from storage.migrations.runner import alembic_config, upgrade_to
from storage.models import Base
from storage.repository import Repository
from tests.storage import workers
from tests.storage.helpers import add_generated


def _head() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def _not_fts(name: str | None, type_: str, _parent: Any) -> bool:
    """The FTS5 virtual table and its shadow tables are SQLite-only and not in the models."""
    return not (type_ == "table" and name is not None and name.startswith("images_fts"))


def _versions(db_path: Path) -> list[str]:
    engine = create_engine(f"sqlite:///{db_path}")
    try:
        with engine.connect() as connection:
            return [row[0] for row in connection.execute(text("SELECT version_num FROM alembic_version"))]
    finally:
        engine.dispose()


def test_migrated_schema_matches_the_models(repo: Repository) -> None:
    with repo.db.engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"include_name": _not_fts, "compare_type": True, "compare_server_default": True}
        )
        diff = compare_metadata(context, Base.metadata)
    assert diff == []


def test_fts_table_and_triggers_exist(repo: Repository) -> None:
    with repo.db.engine.connect() as connection:
        names = {
            row[0]
            for row in connection.execute(
                text("SELECT name FROM sqlite_master WHERE name LIKE 'images_fts%'")
            )
        }
    assert {"images_fts", "images_fts_insert", "images_fts_delete", "images_fts_update"} <= names


def test_opening_twice_is_idempotent(tmp_path: Path) -> None:
    url, images = f"sqlite:///{tmp_path / 'atelier.db'}", tmp_path / "images"
    first = Repository.open(url, images)
    conversation = first.create_conversation("kept")
    add_generated(first, conversation.id, "a kept image", index=1)
    first.db.dispose()

    second = Repository.open(url, images)
    assert second.counts() == {"conversations": 1, "messages": 1, "images": 1, "generations": 1}
    assert [i.prompt for i in second.search_images("kept")] == ["a kept image"]
    assert second.check_integrity().ok
    second.db.dispose()
    assert _versions(tmp_path / "atelier.db") == [_head()]


def test_database_from_the_first_release_upgrades_with_its_data(tmp_path: Path) -> None:
    """Append-only migrations: a 0001 database (no lookup indexes) opens, upgrades, keeps rows."""
    url, images = f"sqlite:///{tmp_path / 'atelier.db'}", tmp_path / "images"
    old = Database(url)
    with old.engine.connect() as connection:
        upgrade_to(connection, "0001_initial")
    old.dispose()
    assert _versions(tmp_path / "atelier.db") == ["0001_initial"]

    first = Repository(Database(url), ImageFileStore(images))  # the 0001 schema, no upgrade
    conversation = first.create_conversation("old")
    root = add_generated(first, conversation.id, "an old lighthouse", index=1)
    add_generated(first, conversation.id, "an old lighthouse at night", parent_id=root.id, index=2)
    first.db.dispose()

    upgraded = Repository.open(url, images)
    assert _versions(tmp_path / "atelier.db") == [_head()]
    assert [n.image.number for n in upgraded.lineage_tree(root.id)] == [1, 2]
    assert len(upgraded.search_images("lighthouse")) == 2
    with upgraded.db.engine.connect() as connection:
        plan = " ".join(
            str(row[3])
            for row in connection.execute(text("EXPLAIN QUERY PLAN DELETE FROM messages WHERE id = 1"))
        )
    assert "SCAN" not in plan  # deleting a message finds the images and generations by index
    upgraded.delete_conversation(conversation.id)
    assert upgraded.check_integrity().ok
    upgraded.db.dispose()


@pytest.mark.slow
def test_two_processes_open_a_fresh_database_at_once(tmp_path: Path) -> None:
    db_path, images = tmp_path / "fresh.db", tmp_path / "images"
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    results = context.Queue()
    processes = [
        context.Process(target=workers.open_fresh, args=(str(db_path), str(images), barrier, results))
        for _ in range(2)
    ]
    for process in processes:
        process.start()
    reports = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(timeout=30)
    errors = [detail for status, detail in reports if status != "ok"]
    assert not errors, "\n\n".join(errors)
    assert sorted(detail for _, detail in reports) == [1, 2]
    assert _versions(db_path) == [_head()]


def test_many_connections_opening_a_fresh_database_at_once_all_succeed(tmp_path: Path) -> None:
    """Several app processes starting together (UI + CLI) must never see "database is locked".

    SQLite fails one of two simultaneous switches to WAL at once, busy timeout or not; threads
    hit the same lock path as processes and hit it within a few rounds.
    """
    failures: list[str] = []
    for round_number in range(25):
        url = f"sqlite:///{tmp_path / f'round{round_number}.db'}"
        barrier = threading.Barrier(4)

        def open_and_write(url: str = url, barrier: threading.Barrier = barrier) -> None:
            barrier.wait(timeout=30)
            try:
                repo = Repository.open(url, tmp_path / "images")
                repo.create_conversation("concurrent start")
                repo.db.dispose()
            except StorageError as exc:
                failures.append(str(exc))

        threads = [threading.Thread(target=open_and_write) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    assert failures == []


def test_a_file_that_is_not_sqlite_is_refused_untouched(tmp_path: Path) -> None:
    junk = tmp_path / "notes.db"
    junk.write_bytes(b"These are my notes, not a database.\n" * 200)
    before = junk.read_bytes()
    with pytest.raises(StorageError, match="is not an SQLite database"):
        Repository.open(f"sqlite:///{junk}", tmp_path / "images")
    assert junk.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.db"]
