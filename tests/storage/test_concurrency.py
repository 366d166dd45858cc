"""Two processes writing at once (the Streamlit app and the CLI, or two browser sessions).

With a deferred BEGIN, two writers that both read "the next image number" first get
"database is locked" at once; `BEGIN IMMEDIATE` plus a busy timeout makes them queue instead.
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

import pytest

from storage.repository import Repository
from tests.storage import workers
from tests.storage.helpers import numbers_by_conversation, row_count

PER_PROCESS = 200


def _run_two(target: Any, argsets: list[tuple[Any, ...]]) -> list[tuple[str, Any]]:
    """Start one process per argset behind a shared barrier; return what each reported."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(len(argsets))
    results = context.Queue()
    processes = [context.Process(target=target, args=(*args, barrier, results)) for args in argsets]
    for process in processes:
        process.start()
    reports = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(timeout=30)
    errors = [detail for status, detail in reports if status != "ok"]
    assert not errors, "\n\n".join(errors)
    assert [p.exitcode for p in processes] == [0] * len(processes)
    return reports


@pytest.mark.slow
@pytest.mark.parametrize("shared", [False, True], ids=["two-conversations", "one-shared-conversation"])
def test_two_processes_write_200_images_each(tmp_path: Path, shared: bool) -> None:
    db_path, images_dir = tmp_path / "atelier.db", tmp_path / "images"
    repo = Repository.open(f"sqlite:///{db_path}", images_dir)
    first = repo.create_conversation("first")
    second = first if shared else repo.create_conversation("second")

    _run_two(
        workers.write_images,
        [
            (str(db_path), str(images_dir), first.id, PER_PROCESS, "a"),
            (str(db_path), str(images_dir), second.id, PER_PROCESS, "b"),
        ],
    )

    assert row_count(repo, "images") == 2 * PER_PROCESS
    assert row_count(repo, "messages") == 2 * PER_PROCESS
    assert len(list(repo.files.all_hashes())) == 2 * PER_PROCESS
    numbers = numbers_by_conversation(repo)
    if shared:
        assert numbers == {first.id: list(range(1, 2 * PER_PROCESS + 1))}
    else:
        expected = list(range(1, PER_PROCESS + 1))
        assert numbers == {first.id: expected, second.id: expected}
    # ...and every image has its file, with the right bytes.
    assert repo.check_integrity().ok
    repo.db.dispose()
