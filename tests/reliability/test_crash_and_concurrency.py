"""Crash safety and concurrency: a killed turn loses nothing, parallel sessions never collide."""

from __future__ import annotations

import json
import logging
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from assistant.cli import app
from assistant.core import Assistant
from assistant.events import Failed, ImageReady
from assistant.runtime import open_repository
from assistant.settings import BackendChoice, Settings

ROOT = Path(__file__).resolve().parents[2]


def worker(
    data_dir: Path, label: str, turns: int | None = None, *, kill_at: str | None = None
) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "tests.reliability.turn_worker", str(data_dir), label]
    if turns is not None:
        command.append(str(turns))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATELIER_")}
    if kill_at is not None:
        env["ATELIER_TEST_KILL_AT"] = kill_at
    return subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def doctor(data_dir: Path, *args: str) -> dict[str, Any]:
    """`atelier doctor --json` on the data dir, as a user runs it (the real command, in-process)."""
    result = CliRunner().invoke(
        app, ["doctor", "--json", *args], env={"ATELIER_DATA_DIR": str(data_dir)}, catch_exceptions=False
    )
    report: dict[str, Any] = json.loads(result.stdout)
    assert result.exit_code == (0 if report["nothing_lost"] else 1), result.output
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


# ----- the kill test ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Kill:
    """Where one worker dies: at a named point of the image write, or after a random delay."""

    label: str
    point: str | None = None  # "before-rename:2" etc. (see turn_worker)
    delay: float = 0.0


def kill_worker(data_dir: Path, kill: Kill) -> str:
    process = worker(data_dir, kill.label, kill_at=kill.point)
    assert process.stdout is not None
    assert process.stdout.readline().startswith("conversation ")  # up, with its conversation
    if kill.point is None:
        time.sleep(kill.delay)
        process.send_signal(signal.SIGKILL)
    try:
        stdout, stderr = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    assert process.returncode == -signal.SIGKILL, (process.returncode, stdout, stderr)
    if kill.point is not None:  # it died where it was told to, not somewhere else
        assert f"kill-point {kill.point.split(':')[0]}" in stdout, (stdout, stderr)
    return stdout


def check_after_kill(data_dir: Path, kill: Kill, images_before: int, caplog: pytest.LogCaptureFixture) -> int:
    # 1. Report only, before anything sweeps: what did the killed process leave?
    found = doctor(data_dir, "--no-sweep")
    assert found["nothing_lost"] and found["problems"] == [], found
    assert found["missing_files"] == [] and found["hash_mismatches"] == [] and found["database_errors"] == []
    assert found["swept_temp_files"] == found["swept_orphan_files"] == 0  # --no-sweep touched nothing
    # Leftovers are allowed only as things the next start sweeps: every file without a row is
    # one the killed write had marked, and one turn leaves at most one image's worth.
    assert set(found["orphan_files"]) <= set(found["unfinished_writes"]), found
    assert len(found["temp_files"]) <= 1 and len(found["unfinished_writes"]) <= 1, found
    images = found["counts"]["images"]
    assert images >= images_before  # nothing already stored disappears
    assert_numbers_gap_free(data_dir / "atelier.db")
    point = (kill.point or "").split(":")[0]
    if point == "before-rename":
        assert len(found["temp_files"]) == 1 and found["orphan_files"] == [], found
    elif point == "after-rename":
        assert found["temp_files"] == [] and len(found["orphan_files"]) == 1, found
    elif point == "after-commit":  # committed: its file is a stored image's, not an orphan
        assert found["orphan_files"] == [] and len(found["unfinished_writes"]) == 1, found

    # 2. Start the app as usual: the start-up sweep clears the leftovers and says nothing was lost.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="assistant.runtime"):
        repo = open_repository(Settings(data_dir=data_dir))
    lines = [r.getMessage() for r in caplog.records if r.name == "assistant.runtime"]
    # (a committed write's marker alone is cleared quietly: its file is a stored image's)
    left_something = bool(found["temp_files"] or found["orphan_files"])
    if left_something:
        assert len(lines) == 1 and lines[0].endswith("nothing lost."), lines
        assert f"removed {len(found['temp_files'])} temp file" in lines[0], lines
        assert f"and {len(found['orphan_files'])} orphan image file" in lines[0], lines
    else:
        assert lines == []
    after = repo.check_integrity()
    assert after.ok, after  # no leftovers, every row's file present with the right hash
    assert repo.counts()["images"] == images  # the sweep removed nothing that was stored
    repo.db.dispose()
    return images


@pytest.mark.slow
def test_sigkill_at_named_and_random_points_leaves_nothing_lost(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rng = random.Random(20261123)
    kills = [
        Kill("before-rename", point="before-rename:2"),
        Kill("after-rename", point="after-rename:2"),
        Kill("after-commit", point="after-commit:2"),
        *(Kill(f"random{i}", delay=rng.uniform(0.0, 1.2)) for i in range(20)),
    ]
    images = 0
    for kill in kills:
        kill_worker(tmp_path, kill)
        images = check_after_kill(tmp_path, kill, images, caplog)
    assert images > 0
    # ...and the data dir is still a working one: a fresh worker finishes its turns.
    done = worker(tmp_path, "after", 2)
    stdout, stderr = done.communicate(timeout=60)
    assert done.returncode == 0 and stdout.count("image ") == 2, (stdout, stderr)
    assert doctor(tmp_path, "--no-sweep")["ok"]


# ----- eight sessions at once ------------------------------------------------------------------

LABEL = re.compile(r"\b(?:proc|thread)\d\b")


def session_text(label: str, turn: int) -> str:
    return (
        f"a lighthouse on a cliff ({label} turn {turn})"
        if turn % 2 == 0
        else f"make it darker ({label} turn {turn})"
    )


@pytest.mark.slow
def test_eight_sessions_in_threads_and_processes_share_one_data_dir(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    turns = 6
    settings = Settings(data_dir=tmp_path, backend=BackendChoice.OFFLINE, width=96, height=96, steps=2)
    errors: list[str] = []
    conversations: dict[str, int] = {}
    shown: dict[str, list[int]] = {}  # the image numbers each session was shown, in order

    def session(label: str) -> None:
        try:
            assistant = Assistant(settings, open_repository(settings))
            conversation_id = assistant.repo.create_conversation(label).id
            conversations[label] = conversation_id
            shown[label] = []
            for turn in range(turns):
                for event in assistant.respond(conversation_id, session_text(label, turn)):
                    if isinstance(event, Failed):
                        errors.append(f"{label} turn {turn}: {event.message}")
                    elif isinstance(event, ImageReady):
                        if event.conversation_id != conversation_id:
                            errors.append(f"{label}: image of conversation {event.conversation_id}")
                        shown[label].append(event.number)
            assistant.repo.db.dispose()
        except BaseException:
            errors.append(f"{label}: {traceback.format_exc()}")

    with caplog.at_level(logging.WARNING):
        processes = {f"proc{i}": worker(tmp_path, f"proc{i}", turns) for i in range(4)}
        threads = [threading.Thread(target=session, args=(f"thread{i}",), daemon=True) for i in range(4)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 240
        for thread in threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        outputs: dict[str, tuple[str, str]] = {}
        for label, process in processes.items():
            try:
                outputs[label] = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                outputs[label] = process.communicate()
                errors.append(f"{label}: still running after the deadline")
    assert [t.name for t in threads if t.is_alive()] == [], "sessions still running after the deadline"
    assert not errors, "\n".join(errors)
    for label, process in processes.items():
        stdout, stderr = outputs[label]
        assert process.returncode == 0, (label, process.returncode, stdout, stderr)
        lines = stdout.splitlines()
        conversations[label] = int(lines[0].removeprefix("conversation "))
        shown[label] = [int(line.removeprefix("image ")) for line in lines[1:]]
    everything = "\n".join(out + err for out, err in outputs.values())
    everything += "\n".join(r.getMessage() + str(r.exc_info or "") for r in caplog.records)
    assert "locked" not in everything.lower(), everything
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []

    repo = open_repository(settings)
    assert len(set(conversations.values())) == 8
    for label, conversation_id in conversations.items():
        # what each session was shown is what is stored: 1..turns, none lost, none twice
        assert shown[label] == list(range(1, turns + 1)), (label, shown[label])
        images = repo.conversation_images(conversation_id)
        assert [image.number for image in images] == list(range(1, turns + 1)), label
        ids = {image.id for image in images}
        for image in images:
            # no cross-talk: image #n answers this session's turn n-1 and names no other session
            assert f"({label} turn {image.number - 1})" in (image.instruction or ""), (
                label,
                image.instruction,
            )
            named = set(LABEL.findall(f"{image.instruction} {image.prompt} {image.revised_prompt}"))
            assert named == {label}, (label, image.number, image.prompt)
            assert image.parent_id is None or image.parent_id in ids
        for message in repo.messages(conversation_id):
            assert message.status == "ok", (label, message.content)
            assert set(LABEL.findall(message.content)) <= {label}, (label, message.content)
        user_texts = [m.content for m in repo.messages(conversation_id) if m.role == "user"]
        assert len(user_texts) == turns and all(f"({label} turn " in text for text in user_texts)
        for generation in repo.generations(conversation_id):
            _, inputs = repo.generation(generation.id)
            assert {i.image_id for i in inputs} <= ids  # an edit only ever reads its own conversation
    assert repo.counts()["images"] == 8 * turns
    assert len(set(repo.files.all_hashes())) == 8 * turns  # one file per image, none left over
    assert repo.check_integrity().ok
    assert_numbers_gap_free(tmp_path / "atelier.db")
    repo.db.dispose()


def test_doctor_names_what_is_lost_and_fails(tmp_path: Path) -> None:
    """The other side of "nothing lost": a missing and a damaged file are listed, exit status 1."""
    done = worker(tmp_path, "lost", 3)
    stdout, stderr = done.communicate(timeout=60)
    assert done.returncode == 0, (stdout, stderr)
    repo = open_repository(Settings(data_dir=tmp_path))
    first, second, _third = repo.conversation_images(1)
    repo.image_path(first).unlink()
    repo.image_path(second).write_bytes(b"bit rot")
    repo.db.dispose()

    result = CliRunner().invoke(app, ["doctor"], env={"ATELIER_DATA_DIR": str(tmp_path)})
    assert result.exit_code == 1, result.output
    assert "PROBLEMS FOUND" in result.output and "Nothing lost" not in result.output
    assert f"image {first.id}: its file is missing" in result.output
    assert f"image {second.id}: its file does not match its hash" in result.output
    report = doctor(tmp_path, "--no-sweep")
    assert not report["nothing_lost"] and not report["ok"]
    assert report["missing_files"] == [first.id] and report["hash_mismatches"] == [second.id]
