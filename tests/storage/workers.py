"""Code that runs in child processes (multiprocessing, spawn) for the multi-process tests.

Kept out of the test modules so a spawned child imports only this and the storage package.
Every worker reports through a queue as ("ok", detail) or ("error", traceback text), so a
failure in a child shows up in the parent's assertion message.
"""

from __future__ import annotations

import os
import traceback
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

from sqlalchemy import event

from storage.repository import NewImage, Repository
from tests.storage.helpers import tiny_image


def _open(db_path: str, images_dir: str) -> Repository:
    return Repository.open(f"sqlite:///{db_path}", Path(images_dir))


def write_images(
    db_path: str,
    images_dir: str,
    conversation_id: int,
    count: int,
    tag: str,
    barrier: Barrier,
    results: Queue[tuple[str, Any]],
) -> None:
    """Write `count` one-image turns as fast as possible, starting together with the others."""
    try:
        repo = _open(db_path, images_dir)
        barrier.wait(timeout=60)
        offset = 0 if tag == "a" else 1000
        for i in range(count):
            repo.record_turn(
                conversation_id,
                reply=f"{tag} {i}",
                images=[
                    NewImage(
                        image=tiny_image(offset + i),
                        operation="generate",
                        backend="offline",
                        model="tiny",
                        prompt=f"worker {tag} image {i}",
                        seed=i,
                    )
                ],
            )
        repo.db.dispose()
        results.put(("ok", tag))
    except BaseException:
        results.put(("error", traceback.format_exc()))


def open_fresh(db_path: str, images_dir: str, barrier: Barrier, results: Queue[tuple[str, Any]]) -> None:
    """Open (and so migrate) a database that another process is opening at the same moment."""
    try:
        barrier.wait(timeout=60)
        repo = _open(db_path, images_dir)
        conversation = repo.create_conversation(f"from pid {os.getpid()}")
        repo.db.dispose()
        results.put(("ok", conversation.id))
    except BaseException:
        results.put(("error", traceback.format_exc()))


def crash_before_commit(db_path: str, images_dir: str, conversation_id: int) -> None:
    """Die like a power cut: after the image file is written, before the row commits.

    `os._exit` skips every `except`/`finally`, so the repository gets no chance to clean up.
    """
    repo = _open(db_path, images_dir)

    def _die(_session: Any) -> None:
        os._exit(9)

    event.listen(repo.db._write_sessions, "before_commit", _die)
    repo.record_turn(
        conversation_id,
        reply="never committed",
        images=[
            NewImage(image=tiny_image(99), operation="generate", backend="offline", model="t", prompt="lost")
        ],
    )
    os._exit(0)  # not reached: the commit hook exits first


def crash_after_commit(db_path: str, images_dir: str, conversation_id: int) -> None:
    """Die right after the turn's commit, before its pending markers are cleared."""
    repo = _open(db_path, images_dir)

    def _die(_session: Any) -> None:
        os._exit(9)

    # A SQLAlchemy after_commit listener runs inside commit, before `Database.write`'s hooks.
    event.listen(repo.db._write_sessions, "after_commit", _die)
    repo.record_turn(
        conversation_id,
        reply="committed",
        images=[
            NewImage(image=tiny_image(98), operation="generate", backend="offline", model="t", prompt="kept")
        ],
    )
    os._exit(0)  # not reached
