"""Soak: concurrent clients (threads and processes) running chat turns on one data dir.

Each client is a user with a conversation of its own, driving `Assistant.respond` on the
offline backend in a loop: a new picture, then edits, a transform, a variation, a question,
a regeneration. Half the clients (by default) are threads of this process sharing nothing but
the data dir, the others are processes of their own, so both the in-process and the
cross-process paths of SQLite (WAL, BEGIN IMMEDIATE, busy timeout) and the file store are
loaded at once. All clients start together behind a barrier.

Prints turns/s, p50/p95/max turn latency, the errors (must be 0), and the record afterwards:
image rows vs files on disk (must match), messages and generations per turn, gap-free
numbers, and `atelier doctor` (must be OK). Exit status 0 only when all of that holds.

    python bench/soak.py                                  # 8 clients × 200 turns, 64 px, 2 steps
    python bench/soak.py --clients 8 --turns 25           # a quick run
    python bench/soak.py --data-dir /tmp/soak --keep      # keep the data to look at afterwards
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SUBJECTS = ("fox", "lighthouse", "cabin", "owl", "sailboat", "castle", "cat", "robot")
PLACES = ("in the snow", "on a cliff", "by a lake", "in a forest", "at the beach", "in a city")
#: one user's session, repeated: each step refers to what the earlier ones made
SCRIPT = (
    "a {adjective} {subject} {place} ({label})",
    "make it darker",
    "make it snowier",
    "flip it horizontally",
    "2 variations of #{last}",
    "what prompt made #{first}?",
    "make #{first} brighter",
    "regenerate #{first}",
)
ADJECTIVES = ("misty", "golden", "quiet", "stormy", "cozy", "bright")


@dataclass
class ClientReport:
    label: str
    conversation_id: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    images: int = 0
    turns: int = 0


def run_client(data_dir: str, label: str, turns: int, size: int, steps: int, barrier: Any) -> ClientReport:
    """One user: its own Assistant and conversation, `turns` turns as fast as it can."""
    from assistant.core import Assistant
    from assistant.events import Failed, ImageReady
    from assistant.runtime import open_repository
    from assistant.settings import BackendChoice, Settings

    report = ClientReport(label)
    settings = Settings(
        data_dir=Path(data_dir), backend=BackendChoice.OFFLINE, width=size, height=size, steps=steps
    )
    assistant = Assistant(settings, open_repository(settings))
    report.conversation_id = assistant.repo.create_conversation(f"soak {label}").id
    first = last = 0
    barrier.wait(timeout=300)
    for index in range(turns):
        step = SCRIPT[index % len(SCRIPT)]
        if index % len(SCRIPT) == 0:
            first = 0
        text = step.format(
            adjective=ADJECTIVES[index % len(ADJECTIVES)],
            subject=SUBJECTS[(index // len(SCRIPT)) % len(SUBJECTS)],
            place=PLACES[index % len(PLACES)],
            label=f"{label} turn {index}",
            first=first or last,
            last=last,
        )
        started = time.perf_counter()
        try:
            for event in assistant.respond(report.conversation_id, text):
                if isinstance(event, Failed):
                    report.errors.append(f"turn {index} {text!r}: {event.message}")
                elif isinstance(event, ImageReady):
                    report.images += 1
                    last = event.number
                    first = first or event.number
        except Exception:
            report.errors.append(f"turn {index} {text!r}: {traceback.format_exc(limit=3)}")
        report.latencies.append(time.perf_counter() - started)
        report.turns += 1
    assistant.repo.db.dispose()
    return report


def _process_main(
    data_dir: str, label: str, turns: int, size: int, steps: int, barrier: Any, out: Any
) -> None:
    try:
        report = run_client(data_dir, label, turns, size, steps, barrier)
    except Exception:
        report = ClientReport(label, errors=[traceback.format_exc()])
    out.put(report.__dict__)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def check_record(data_dir: Path, reports: list[ClientReport]) -> dict[str, Any]:
    """Rows against files, turns against messages, numbering, and `atelier doctor` in its own process."""
    from assistant.runtime import open_repository
    from assistant.settings import BackendChoice, Settings

    repo = open_repository(Settings(data_dir=data_dir, backend=BackendChoice.OFFLINE))
    counts = repo.counts()
    known = repo.known_hashes()
    files = set(repo.files.all_hashes())
    integrity = repo.check_integrity()
    repo.db.dispose()
    gaps = 0
    with sqlite3.connect(data_dir / "atelier.db") as connection:
        by_conversation: dict[int, list[int]] = {}
        for conversation_id, number in connection.execute(
            "SELECT conversation_id, number FROM images ORDER BY conversation_id, number"
        ):
            by_conversation.setdefault(conversation_id, []).append(number)
        gaps = sum(numbers != list(range(1, len(numbers) + 1)) for numbers in by_conversation.values())
        failed_messages = connection.execute("SELECT count(*) FROM messages WHERE status != 'ok'").fetchone()[
            0
        ]
    env = {**os.environ, "ATELIER_DATA_DIR": str(data_dir), "ATELIER_BACKEND": "offline"}
    doctor = subprocess.run(
        [sys.executable, "-m", "assistant.cli", "doctor", "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    doctor_report = (
        json.loads(doctor.stdout) if doctor.stdout.strip() else {"ok": False, "stderr": doctor.stderr}
    )
    images_reported = sum(r.images for r in reports)
    return {
        "counts": counts,
        "image_rows": counts["images"],
        "hashes_named_by_rows": len(known),
        "files_on_disk": len(files),
        "rows_match_files": known == files and counts["images"] == images_reported,
        "images_reported_by_events": images_reported,
        "failed_messages": failed_messages,
        "numbering_gaps": gaps,
        "integrity_ok": integrity.ok,
        "doctor_ok": bool(doctor_report.get("ok")) and doctor.returncode == 0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--processes", type=int, default=None, help="how many are processes (default half)")
    parser.add_argument("--turns", type=int, default=200, help="turns per client (default 200)")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    parser.add_argument("--steps", type=int, default=2, help="offline renderer steps (default 2)")
    parser.add_argument("--data-dir", type=Path, default=None, help="default: a temp dir, removed after")
    parser.add_argument("--keep", action="store_true", help="keep the data dir")
    args = parser.parse_args(argv)
    processes = args.clients // 2 if args.processes is None else min(args.processes, args.clients)
    threads = args.clients - processes

    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="atelier-soak-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    from assistant.runtime import open_repository
    from assistant.settings import BackendChoice, Settings

    open_repository(
        Settings(data_dir=data_dir, backend=BackendChoice.OFFLINE)
    ).db.dispose()  # migrate once, up front

    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(args.clients + 1)
    results = context.Queue()
    print(
        f"soak: {args.clients} clients ({threads} threads, {processes} processes) × {args.turns} turns, "
        f"{args.size}² px, {args.steps} steps, data in {data_dir}",
        flush=True,
    )
    workers = [
        context.Process(
            target=_process_main,
            args=(str(data_dir), f"p{i}", args.turns, args.size, args.steps, barrier, results),
        )
        for i in range(processes)
    ]
    for worker in workers:
        worker.start()
    thread_reports: list[ClientReport] = []

    def thread_main(label: str) -> None:
        try:
            thread_reports.append(
                run_client(str(data_dir), label, args.turns, args.size, args.steps, barrier)
            )
        except Exception:
            thread_reports.append(ClientReport(label, errors=[traceback.format_exc()]))

    pool = [threading.Thread(target=thread_main, args=(f"t{i}",)) for i in range(threads)]
    for thread in pool:
        thread.start()
    barrier.wait(timeout=600)  # everyone is set up: the clock starts now
    started = time.perf_counter()
    for thread in pool:
        thread.join()
    process_reports = [ClientReport(**results.get(timeout=24 * 3600)) for _ in workers]
    elapsed = time.perf_counter() - started
    for worker in workers:
        worker.join(timeout=60)
    reports = thread_reports + process_reports

    latencies = [value for report in reports for value in report.latencies]
    errors = [f"{r.label}: {e}" for r in reports for e in r.errors]
    turns = sum(r.turns for r in reports)
    record = check_record(data_dir, reports)
    print(f"turns           {turns} in {elapsed:.1f} s = {turns / elapsed:.1f} turns/s")
    if latencies:
        print(
            f"latency         p50 {percentile(latencies, 0.50) * 1000:.0f} ms · "
            f"p95 {percentile(latencies, 0.95) * 1000:.0f} ms · max {max(latencies) * 1000:.0f} ms · "
            f"mean {statistics.fmean(latencies) * 1000:.0f} ms"
        )
    print(f"errors          {len(errors)}")
    for error in errors[:10]:
        print(f"  {error}")
    print(
        f"record          {record['image_rows']} image rows · {record['hashes_named_by_rows']} files named · "
        f"{record['files_on_disk']} files on disk · {record['images_reported_by_events']} ImageReady events"
    )
    counts = record["counts"]
    print(
        f"                {counts['conversations']} conversations · {counts['messages']} messages · "
        f"{counts['generations']} generations · {record['failed_messages']} failed messages · "
        f"{record['numbering_gaps']} numbering gaps"
    )
    print(f"rows == files   {record['rows_match_files']}")
    print(
        f"doctor          {'OK' if record['doctor_ok'] else 'PROBLEMS'} (integrity {record['integrity_ok']})"
    )
    ok = (
        not errors
        and turns == args.clients * args.turns
        and record["rows_match_files"]
        and record["doctor_ok"]
        and record["integrity_ok"]
        and record["numbering_gaps"] == 0
    )
    print("SOAK OK" if ok else "SOAK FAILED")
    if args.data_dir is None and not args.keep:
        shutil.rmtree(data_dir, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
