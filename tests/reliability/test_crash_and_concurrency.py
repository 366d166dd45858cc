"""Crash safety and concurrency: a killed turn loses nothing, parallel sessions never collide."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from assistant.core import Assistant
from assistant.events import Failed, ImageReady
from assistant.runtime import open_repository
from assistant.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def worker(data_dir: Path, label: str, turns: int | None = None) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "tests.reliability.turn_worker", str(data_dir), label]
    if turns is not None:
        command.append(str(turns))
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def doctor(data_dir: Path) -> dict[str, object]:
    env = {**os.environ, "ATELIER_DATA_DIR": str(data_dir)}
    done = subprocess.run(
        [sys.executable, "-m", "assistant.cli", "doctor", "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    report: dict[str, object] = json.loads(done.stdout)
    assert done.returncode == (0 if report["ok"] else 1)
    return report


def assert_numbers_gap_free(database: Path) -> None:
    with sqlite3.connect(database) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = connection.execute(
            "SELECT conversation_id, number FROM images ORDER BY conversation_id, number"
        )
        by_conversation: dict[int, list[int]] = {}
        for conversation_id, number in rows:
            by_conversation.setdefault(conversation_id, []).append(number)
        for numbers in by_conversation.values():
            assert numbers == list(range(1, len(numbers) + 1))
        orphans = connection.execute(
            "SELECT count(*) FROM images "
            "WHERE parent_id IS NOT NULL AND parent_id NOT IN (SELECT id FROM images)"
        ).fetchone()[0]
        assert orphans == 0


@pytest.mark.slow
def test_sigkill_at_twenty_random_points_leaves_nothing_lost(tmp_path: Path) -> None:
    rng = random.Random(20261123)
    images_before = 0
    for kill in range(20):
        process = worker(tmp_path, f"k{kill}")
        assert process.stdout is not None
        process.stdout.readline()  # the worker is up and has its conversation
        time.sleep(rng.uniform(0.0, 1.2))
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        report = doctor(tmp_path)
        assert report["ok"], report
        assert report["missing_files"] == [] and report["hash_mismatches"] == []
        counts = report["counts"]
        assert isinstance(counts, dict)
        assert counts["images"] >= images_before  # nothing already stored disappears
        images_before = counts["images"]
        assert_numbers_gap_free(tmp_path / "atelier.db")
    assert images_before > 0


@pytest.mark.slow
def test_eight_sessions_in_threads_and_processes_share_one_data_dir(tmp_path: Path) -> None:
    turns = 6
    processes = [worker(tmp_path, f"p{i}", turns) for i in range(4)]

    settings = Settings(data_dir=tmp_path, backend="offline", width=96, height=96, steps=2)
    errors: list[str] = []
    conversations: dict[str, int] = {}

    def session(label: str) -> None:
        assistant = Assistant(settings, open_repository(settings))
        conversation_id = assistant.repo.create_conversation(label).id
        conversations[label] = conversation_id
        for turn in range(turns):
            text = f"a {label} lighthouse, turn {turn}" if turn % 2 == 0 else "make it darker"
            for event in assistant.respond(conversation_id, text):
                if isinstance(event, Failed):
                    errors.append(f"{label}: {event.message}")
                elif isinstance(event, ImageReady):
                    assert event.conversation_id == conversation_id

    threads = [threading.Thread(target=session, args=(f"t{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    outputs = [process.communicate(timeout=300) for process in processes]
    assert all(process.returncode == 0 for process in processes), outputs
    assert not errors
    assert not any("locked" in out + err for out, err in outputs)

    repo = open_repository(settings)
    for label, conversation_id in conversations.items():
        images = repo.conversation_images(conversation_id)
        assert [image.number for image in images] == list(range(1, turns + 1))
        # no cross-talk: every edit's parent is in the same conversation, every prompt is ours
        ids = {image.id for image in images}
        assert all(image.parent_id is None or image.parent_id in ids for image in images)
        assert label in images[0].prompt
    assert repo.counts()["images"] == 8 * turns
    assert repo.check_integrity().ok
    assert_numbers_gap_free(tmp_path / "atelier.db")
