"""A turn is stored whole or not at all: no row without its file, no file left by a failed turn.

Failures are injected at the two dangerous points (the file write, and the moment between the
file write and the commit) and by killing a process outright between them.
"""

from __future__ import annotations

import logging
import multiprocessing
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from PIL import Image as PILImage
from sqlalchemy import event

from storage.files import STEP_RENAMED, ImageFileStore, SweepReport
from storage.repository import NewGeneration, NewImage, RecoveryReport, Repository
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

    # The hook really ran after the writes: image and mask files existed at that moment, each
    # with its pending marker (what the next start would use had the process died here).
    written = [name for name in seen_at_commit["files"] if not name.startswith(".tmp/")]
    markers = [name for name in seen_at_commit["files"] if name.endswith(".pending")]
    assert len(written) == len(files_before) + 2 and len(markers) == 2
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

    assert _run_child(workers.crash_before_commit, db_path, images_dir, conversation.id) == 9

    rows_after, files_after = _snapshot(repo)
    assert rows_after == rows_before  # no row for the lost image
    left = sorted(set(files_after) - set(files_before))
    assert len(left) == 2 and left[0].startswith(".tmp/") and left[0].endswith(".pending")
    digest = Path(left[1]).stem  # the image file itself, renamed into place, and its marker
    report = repo.check_integrity()
    assert report.nothing_lost and not report.ok
    assert report.orphan_files == [digest] and report.unfinished_writes == [digest]

    # The full walk keeps young files (no lock-free guess); the start-up sweep uses the marker.
    assert repo.sweep() == SweepReport(temp_files_removed=0, orphan_files_removed=0)
    recovered = repo.recover()
    assert (recovered.orphan_files_removed, recovered.temp_files_removed) == (1, 0)
    assert recovered.nothing_lost and recovered.images_checked == 1
    assert files_on_disk(images_dir) == files_before
    assert repo.check_integrity().ok
    assert repo.recover() == RecoveryReport()  # nothing left: the next start does nothing
    assert add_generated(repo, conversation.id, "next", index=2).number == 2
    repo.db.dispose()


def test_process_killed_right_after_commit_keeps_its_image(tmp_path: Path) -> None:
    """Committed but its marker not yet cleared: the start-up sweep must keep the file."""
    db_path, images_dir = tmp_path / "atelier.db", tmp_path / "images"
    repo = Repository.open(f"sqlite:///{db_path}", images_dir)
    conversation = repo.create_conversation()
    add_generated(repo, conversation.id, "kept", index=1)

    assert _run_child(workers.crash_after_commit, db_path, images_dir, conversation.id) == 9

    images = repo.conversation_images(conversation.id)
    assert [image.number for image in images] == [1, 2]
    report = repo.check_integrity()
    assert report.unfinished_writes == [images[1].sha256] and report.orphan_files == []
    recovered = repo.recover()
    assert (recovered.committed_files_kept, recovered.orphan_files_removed) == (1, 0)
    # Its marker alone is no sign of a lost write (a start can race a live writer's cleanup):
    # cleared quietly, with the file's hash verified.
    assert recovered.nothing_lost and not recovered.found_leftovers
    assert repo.load_image(images[1]).size == (8, 8)
    assert repo.check_integrity().ok
    repo.db.dispose()


def test_start_up_sweep_spares_a_live_writers_file(tmp_path: Path) -> None:
    """A second process starting while the first is between rename and commit must not eat its file."""
    db_path, images_dir = tmp_path / "atelier.db", tmp_path / "images"
    writer = Repository.open(f"sqlite:///{db_path}", images_dir)
    conversation = writer.create_conversation()
    add_generated(writer, conversation.id, "first", index=1)
    renamed, release = threading.Event(), threading.Event()

    def pause_after_rename(step: str) -> None:
        if step == STEP_RENAMED:
            renamed.set()
            release.wait(timeout=30)

    writer.files.fault_hook = pause_after_rename
    starting = Repository.open(f"sqlite:///{db_path}", images_dir)  # the other process, opened
    turn: list[Any] = []
    writing = threading.Thread(
        target=lambda: turn.append(add_generated(writer, conversation.id, "second", index=2))
    )
    writing.start()
    assert renamed.wait(timeout=30)
    # Right now the new file is in the store with no row, exactly like a crash's orphan.
    assert len(starting.check_integrity().orphan_files) == 1
    recovered: list[RecoveryReport] = []
    start_up = threading.Thread(target=lambda: recovered.append(starting.recover()))
    start_up.start()
    start_up.join(timeout=0.5)
    assert start_up.is_alive()  # it waits for the writer's transaction instead of guessing
    release.set()
    writing.join(timeout=30)
    start_up.join(timeout=30)
    assert not writing.is_alive() and not start_up.is_alive()
    assert recovered and recovered[0].orphan_files_removed == 0
    image = starting.get_image(turn[0].id)
    assert starting.files.exists(image.sha256) and image.number == 2
    assert starting.check_integrity().ok
    writer.db.dispose()
    starting.db.dispose()


def _run_child(target: Any, db_path: Path, images_dir: Path, conversation_id: int) -> int | None:
    context = multiprocessing.get_context("spawn")
    child = context.Process(target=target, args=(str(db_path), str(images_dir), conversation_id))
    child.start()
    child.join(timeout=60)
    return child.exitcode


def test_sweep_removes_stale_temp_files(repo: Repository) -> None:
    conversation = repo.create_conversation()
    add_generated(repo, conversation.id, "kept", index=1)
    stale = repo.files.temp_dir / "abcdef12-xyz.tmp"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"half a png")
    assert repo.check_integrity().temp_files == [str(stale)]
    assert repo.sweep(grace_seconds=0) == SweepReport(temp_files_removed=1, orphan_files_removed=0)
    assert repo.check_integrity().ok


def test_start_up_sweeps_what_a_crash_left_and_says_nothing_was_lost(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Opening the data dir removes a crash's temp file and marked orphan, of any age, and logs it."""
    from assistant.runtime import open_repository
    from assistant.settings import Settings

    settings = Settings(data_dir=tmp_path)
    repo = open_repository(settings)
    conversation = repo.create_conversation()
    kept = add_generated(repo, conversation.id, "kept", index=1)
    temp = repo.files.temp_dir / "deadbeef-1.tmp"  # a write killed before its rename, just now
    temp.write_bytes(b"half a png")
    orphan = repo.files.put(b"renamed, never committed")  # outside a transaction: never settled
    unmarked = repo.files.path_for("0" * 64)  # not from a crash: start-up does not walk the library
    unmarked.parent.mkdir(parents=True, exist_ok=True)
    unmarked.write_bytes(b"copied in by hand")
    repo.db.dispose()

    with caplog.at_level(logging.INFO, logger="assistant.runtime"):
        reopened = open_repository(settings)
    assert not temp.exists() and not reopened.files.exists(orphan)
    assert reopened.files.exists(kept.sha256) and unmarked.exists()
    lines = [r.getMessage() for r in caplog.records if r.name == "assistant.runtime"]
    assert lines == [
        "Start-up sweep: removed 1 temp file and 1 orphan image file left by an interrupted write; "
        "all 1 stored image have their files, nothing lost."
    ]
    assert [r.levelno for r in caplog.records if r.name == "assistant.runtime"] == [logging.INFO]
    assert reopened.check_integrity().orphan_files == ["0" * 64]

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="assistant.runtime"):
        open_repository(settings).db.dispose()  # nothing left: a silent, one-listdir start
    assert [r for r in caplog.records if r.name == "assistant.runtime"] == []
    reopened.db.dispose()


def test_start_up_warns_when_a_stored_image_has_lost_its_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from assistant.runtime import open_repository
    from assistant.settings import Settings

    settings = Settings(data_dir=tmp_path)
    repo = open_repository(settings)
    conversation = repo.create_conversation()
    first = add_generated(repo, conversation.id, "one", index=1)
    add_generated(repo, conversation.id, "two", index=2)
    repo.files.path_for(first.sha256).unlink()  # lost outside Atelier (a disk problem, a hand)
    (repo.files.temp_dir / "deadbeef-2.tmp").write_bytes(b"and a crash")
    repo.db.dispose()
    with caplog.at_level(logging.INFO, logger="assistant.runtime"):
        open_repository(settings).db.dispose()
    warnings = [r for r in caplog.records if r.name == "assistant.runtime" and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert f"PROBLEMS: images {first.id} have a missing or damaged file" in warnings[0].getMessage()


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
