"""A turn is stored whole or not at all: no row without its file, no file left by a failed turn.

Failures are injected at the two dangerous points (the file write, and the moment between the
file write and the commit) and by killing a process outright between them.
"""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image as PILImage
from sqlalchemy import event

from storage.files import ImageFileStore, SweepReport
from storage.repository import NewGeneration, NewImage, Repository
from tests.storage import workers
from tests.storage.helpers import add_generated, files_on_disk, row_count, tiny_image

TABLES = ("conversations", "messages", "generations", "generation_inputs", "images")


def _snapshot(repo: Repository) -> tuple[dict[str, int], dict[str, bytes]]:
    return {t: row_count(repo, t) for t in TABLES}, files_on_disk(repo.files.root)


def _inpaint(parent_id: int, mask: PILImage.Image, index: int) -> NewGeneration:
    image = NewImage(
        image=tiny_image(index),
        operation="inpaint",
        backend="offline",
        model="m",
        prompt="add a boat",
        parent_id=parent_id,
        mask=mask,
    )
    return NewGeneration(
        operation="inpaint",
        backend="offline",
        model="m",
        prompt="add a boat",
        inputs=[(parent_id, "init"), (parent_id, "mask")],
        images=[image],
    )


def test_failure_after_file_write_before_commit_leaves_nothing(repo: Repository) -> None:
    conversation = repo.create_conversation()
    first = add_generated(repo, conversation.id, "a harbour", index=1)
    rows_before, files_before = _snapshot(repo)
    seen_at_commit: dict[str, Any] = {}

    def _fail(_session: Any) -> None:
        seen_at_commit["files"] = files_on_disk(repo.files.root)
        raise RuntimeError("injected before commit")

    mask = PILImage.new("L", (8, 8), 255)
    event.listen(repo.db._write_sessions, "before_commit", _fail)
    try:
        with pytest.raises(RuntimeError, match="injected"):
            repo.record_turn(conversation.id, reply="boat added", generations=[_inpaint(first.id, mask, 2)])
    finally:
        event.remove(repo.db._write_sessions, "before_commit", _fail)

    # The hook really ran after the writes: image and mask files existed at that moment.
    assert len(seen_at_commit["files"]) == len(files_before) + 2
    assert _snapshot(repo) == (rows_before, files_before)
    assert repo.check_integrity().ok


def test_failure_at_file_write_leaves_no_row_and_removes_earlier_files(
    repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    conversation = repo.create_conversation()
    add_generated(repo, conversation.id, "a harbour", index=1)
    rows_before, files_before = _snapshot(repo)
    real_put = ImageFileStore.put
    calls: list[int] = []

    def _put_then_fail(self: ImageFileStore, data: bytes) -> str:
        calls.append(len(data))
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_put(self, data)

    monkeypatch.setattr(ImageFileStore, "put", _put_then_fail)
    two_images = NewGeneration(
        operation="generate",
        backend="offline",
        model="m",
        prompt="two boats",
        images=[
            NewImage(image=tiny_image(i), operation="generate", backend="offline", model="m", prompt="boat")
            for i in (5, 6)
        ],
    )
    with pytest.raises(OSError, match="No space"):
        repo.record_turn(conversation.id, reply="two boats", generations=[two_images])
    monkeypatch.setattr(ImageFileStore, "put", real_put)

    assert len(calls) == 2  # the first image's file was written, then the second failed
    assert _snapshot(repo) == (rows_before, files_before)
    assert repo.check_integrity().ok


def test_failed_turn_does_not_delete_a_file_an_earlier_row_shares(repo: Repository) -> None:
    """Masks carry no metadata, so the same mask twice is one file; a failure must not take it."""
    conversation = repo.create_conversation()
    source = add_generated(repo, conversation.id, "a lake", index=1)
    mask = PILImage.new("L", (8, 8), 200)
    ok = repo.record_turn(conversation.id, reply="ok", generations=[_inpaint(source.id, mask, 2)]).images[0]
    assert ok.mask_sha256 is not None

    def _fail(_session: Any) -> None:
        raise RuntimeError("injected")

    event.listen(repo.db._write_sessions, "before_commit", _fail)
    try:
        with pytest.raises(RuntimeError):
            repo.record_turn(conversation.id, reply="again", generations=[_inpaint(source.id, mask, 3)])
    finally:
        event.remove(repo.db._write_sessions, "before_commit", _fail)
    assert repo.files.exists(ok.mask_sha256)
    assert repo.load_mask(ok) is not None
    assert repo.check_integrity().ok


def test_numbers_stay_gap_free_after_failed_turns(repo: Repository, monkeypatch: pytest.MonkeyPatch) -> None:
    conversation = repo.create_conversation()
    assert add_generated(repo, conversation.id, "one", index=1).number == 1

    def _fail(_self: ImageFileStore, _data: bytes) -> str:
        raise OSError("disk gone")

    with monkeypatch.context() as patch:
        patch.setattr(ImageFileStore, "put", _fail)
        with pytest.raises(OSError):
            add_generated(repo, conversation.id, "two (fails)", index=2)
    # A backend failure is recorded as a failed turn with no image: it takes no number.
    failed = repo.record_failure(
        conversation.id,
        reply="The backend timed out.",
        plan={"intent": "generate"},
        generation=NewGeneration(
            operation="generate", backend="openai", model="gpt-image", status="failed", error="timeout"
        ),
    )
    assert failed.status == "failed"
    assert [g.status for g in repo.generations(conversation.id)] == ["ok", "failed"]

    assert add_generated(repo, conversation.id, "two", index=3).number == 2
    assert add_generated(repo, conversation.id, "three", index=4).number == 3
    assert [image.number for image in repo.conversation_images(conversation.id)] == [1, 2, 3]


def test_process_killed_between_file_and_commit_leaves_only_a_sweepable_orphan(tmp_path: Path) -> None:
    db_path, images_dir = tmp_path / "atelier.db", tmp_path / "images"
    repo = Repository.open(f"sqlite:///{db_path}", images_dir)
    conversation = repo.create_conversation()
    add_generated(repo, conversation.id, "kept", index=1)
    rows_before, files_before = _snapshot(repo)

    context = multiprocessing.get_context("spawn")
    child = context.Process(
        target=workers.crash_before_commit, args=(str(db_path), str(images_dir), conversation.id)
    )
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 9, "the child should have died inside the commit hook"

    rows_after, files_after = _snapshot(repo)
    assert rows_after == rows_before  # no row for the lost image
    orphans = set(files_after) - set(files_before)
    assert len(orphans) == 1  # its file was written, though
    report = repo.check_integrity()
    assert not report.ok and len(report.orphan_files) == 1 and not report.missing_files

    # The default grace period protects files another process may be about to commit.
    assert repo.sweep() == SweepReport(temp_files_removed=0, orphan_files_removed=0)
    assert repo.sweep(grace_seconds=0).orphan_files_removed == 1
    assert files_on_disk(images_dir) == files_before
    assert repo.check_integrity().ok
    assert add_generated(repo, conversation.id, "next", index=2).number == 2
    repo.db.dispose()


def test_sweep_removes_stale_temp_files(repo: Repository) -> None:
    conversation = repo.create_conversation()
    add_generated(repo, conversation.id, "kept", index=1)
    stale = repo.files.temp_dir / "abcdef12-xyz.tmp"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"half a png")
    assert repo.check_integrity().temp_files == [str(stale)]
    assert repo.sweep(grace_seconds=0) == SweepReport(temp_files_removed=1, orphan_files_removed=0)
    assert repo.check_integrity().ok


def test_start_up_clears_stale_temp_files_only(tmp_path: Path) -> None:
    """Opening the data dir removes a crash's temp file without walking the library."""
    from assistant.runtime import open_repository
    from assistant.settings import Settings

    settings = Settings(data_dir=tmp_path)
    repo = open_repository(settings)
    stale = repo.files.temp_dir / "deadbeef-1.tmp"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"half a png")
    old = time.time() - 7200
    os.utime(stale, (old, old))
    repo.db.dispose()
    reopened = open_repository(settings)
    assert not stale.exists()
    assert reopened.check_integrity().ok


def test_sweep_deletes_under_the_write_lock(repo: Repository, monkeypatch: pytest.MonkeyPatch) -> None:
    """While sweep deletes, no writer can be between file write and commit."""
    conversation = repo.create_conversation()
    add_generated(repo, conversation.id, "kept", index=1)
    repo.files.put(b"an orphan left by a crash")
    database = repo.db.engine.url.database
    assert database is not None
    lock_state: list[str] = []
    real_remove = ImageFileStore.remove

    def _probe(self: ImageFileStore, temps: list[Path], orphans: list[str]) -> SweepReport:
        other = sqlite3.connect(database, timeout=0, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            lock_state.append("free")
            other.execute("ROLLBACK")
        except sqlite3.OperationalError as exc:
            lock_state.append(str(exc))
        finally:
            other.close()
        return real_remove(self, temps, orphans)

    monkeypatch.setattr(ImageFileStore, "remove", _probe)
    assert repo.sweep(grace_seconds=0).orphan_files_removed == 1
    assert lock_state == ["database is locked"]


def test_sweep_spares_a_file_whose_row_commits_while_it_looks(
    repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`atelier doctor` (grace 0) running while the app commits a turn must not eat its file."""
    conversation = repo.create_conversation()
    add_generated(repo, conversation.id, "first", index=1)
    real_stale = ImageFileStore.stale
    committed: list[int] = []

    def _stale_then_app_commits(
        self: ImageFileStore, known: set[str], *, grace_seconds: float = 3600.0
    ) -> tuple[list[Path], list[str]]:
        found = real_stale(self, known, grace_seconds=grace_seconds)
        if not committed:  # the app's turn lands after sweep looked, before it deletes
            committed.append(add_generated(repo, conversation.id, "second", index=2).id)
            found = real_stale(self, known, grace_seconds=grace_seconds)
        return found

    monkeypatch.setattr(ImageFileStore, "stale", _stale_then_app_commits)
    report = repo.sweep(grace_seconds=0)
    assert report.orphan_files_removed == 0
    image = repo.get_image(committed[0])
    assert repo.files.exists(image.sha256)
    assert repo.check_integrity().ok
