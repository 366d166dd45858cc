"""Content-addressed image files: `<root>/ab/abcdef….png`.

Bytes go to a temp file in `<root>/.tmp/`, are fsynced, then renamed into place, so a
reader never sees half a file and a crash leaves at most a `*.tmp` there.

The rename and the commit of the row that names the file are two steps, and a process can
die between them, leaving a whole file that no row names. So that the next start can find
such files without walking the whole library, `put` first drops an empty *pending marker*
`<root>/.tmp/<sha256>.pending`, and the marker goes once the transaction that wrote the file
commits (`settle_pending`, run by `Database.write` through a hook the repository installs).
A marker that outlives its process therefore names exactly the files of a write that may not
have committed; `Repository.recover` decides each one against the database. Everything a
crash can leave is in one small folder, and a start with nothing there costs one listdir.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

TEMP_SUFFIX = ".tmp"
PENDING_SUFFIX = ".pending"
_HEX64 = re.compile(r"[0-9a-f]{64}")

#: The steps of `put` a crash test can stop at (see `ImageFileStore.fault_hook`).
STEP_TEMP_WRITTEN = "temp-written"  # the temp file is complete and fsynced, not yet renamed
STEP_RENAMED = "renamed"  # the file is in place under its hash; no row names it yet


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class SweepReport:
    temp_files_removed: int
    orphan_files_removed: int


@dataclass(frozen=True)
class Leftovers:
    """What `.tmp/` holds: temp files (never renamed) and pending markers (maybe never committed)."""

    temp_files: list[Path]
    pending: list[str]

    def __bool__(self) -> bool:
        return bool(self.temp_files or self.pending)


class ImageFileStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.temp_dir = root / ".tmp"
        self._local = threading.local()
        #: Test seam, None in the app: called with STEP_TEMP_WRITTEN and STEP_RENAMED inside
        #: `put`, so a crash test can SIGKILL the process at exactly that point.
        self.fault_hook: Callable[[str], None] | None = None

    def path_for(self, sha256: str) -> Path:
        if not _HEX64.fullmatch(sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self.root / sha256[:2] / f"{sha256}.png"

    def pending_marker(self, sha256: str) -> Path:
        if not _HEX64.fullmatch(sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self.temp_dir / f"{sha256}{PENDING_SUFFIX}"

    def put(self, data: bytes) -> str:
        """Store bytes under their hash; storing the same bytes twice is a no-op.

        Call it inside the write transaction whose row names the file: the marker it leaves
        is settled when that transaction commits.
        """
        digest = sha256_hex(data)
        target = self.path_for(digest)
        if target.exists():
            return digest
        target.parent.mkdir(parents=True, exist_ok=True)
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        marker = self.pending_marker(digest)
        marker.touch()  # before the file can appear under its final name
        fd, temp_name = tempfile.mkstemp(dir=self.temp_dir, prefix=f"{digest[:8]}-", suffix=TEMP_SUFFIX)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            self._step(STEP_TEMP_WRITTEN)
            os.replace(temp_name, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp_name)
            with contextlib.suppress(FileNotFoundError):
                marker.unlink()
            raise
        self._pending().append(digest)
        self._step(STEP_RENAMED)
        return digest

    def _step(self, name: str) -> None:
        if self.fault_hook is not None:
            self.fault_hook(name)

    def _pending(self) -> list[str]:
        pending: list[str] | None = getattr(self._local, "pending", None)
        if pending is None:
            pending = self._local.pending = []
        return pending

    def settle_pending(self) -> None:
        """The transaction that wrote this thread's new files committed: their markers go."""
        pending = self._pending()
        for digest in pending:
            # A marker that stays (no permission, say) only costs the next start one check.
            with contextlib.suppress(OSError):
                self.pending_marker(digest).unlink()
        pending.clear()

    def forget_pending(self) -> None:
        """The transaction rolled back: keep the markers, so a file the caller fails to delete
        is still found by the next start."""
        self._pending().clear()

    def read(self, sha256: str) -> bytes:
        return self.path_for(sha256).read_bytes()

    def exists(self, sha256: str) -> bool:
        return self.path_for(sha256).exists()

    def delete(self, sha256: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path_for(sha256).unlink()
        with contextlib.suppress(FileNotFoundError):
            self.pending_marker(sha256).unlink()

    def all_hashes(self) -> Iterator[str]:
        if not self.root.exists():
            return
        for path in self.root.glob("??/*.png"):
            if _HEX64.fullmatch(path.stem):
                yield path.stem

    def temp_files(self) -> Iterator[Path]:
        if not self.temp_dir.exists():
            return
        yield from self.temp_dir.glob(f"*{TEMP_SUFFIX}")

    def pending_hashes(self) -> list[str]:
        """Hashes with a pending marker: files of writes that had not settled (sorted)."""
        if not self.temp_dir.exists():
            return []
        found = (p.name[: -len(PENDING_SUFFIX)] for p in self.temp_dir.glob(f"*{PENDING_SUFFIX}"))
        return sorted(digest for digest in found if _HEX64.fullmatch(digest))

    def leftovers(self, *, grace_seconds: float = 0.0) -> Leftovers:
        """Temp files and markers at least `grace_seconds` old; one listdir of `.tmp/`."""
        cutoff = time.time() - grace_seconds
        temps = sorted(t for t in self.temp_files() if _mtime(t) <= cutoff)
        pending = [d for d in self.pending_hashes() if _mtime(self.pending_marker(d)) <= cutoff]
        return Leftovers(temps, pending)

    def clear_marker(self, sha256: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.pending_marker(sha256).unlink()

    def sweep(self, known: set[str], *, grace_seconds: float = 3600.0) -> SweepReport:
        """Remove temp files and files no row names.

        Only files older than `grace_seconds` go: another process may have written a file
        and not yet committed the row that names it.
        """
        temps, orphans = self.stale(known, grace_seconds=grace_seconds)
        return self.remove(temps, orphans)

    def stale(self, known: set[str], *, grace_seconds: float = 3600.0) -> tuple[list[Path], list[str]]:
        """Temp files and unnamed files older than the grace period; looks, deletes nothing.

        Split from `remove` so the repository can walk the folder (slow for a big library)
        without the database lock and re-check the few candidates under it.
        """
        cutoff = time.time() - grace_seconds
        temps = [temp for temp in self.temp_files() if _mtime(temp) <= cutoff]
        orphans = [
            digest
            for digest in self.all_hashes()
            if digest not in known and _mtime(self.path_for(digest)) <= cutoff
        ]
        return temps, orphans

    def remove(self, temps: list[Path], orphans: list[str]) -> SweepReport:
        removed_temps = removed_orphans = 0
        for temp in temps:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
                removed_temps += 1
        for digest in orphans:
            with contextlib.suppress(FileNotFoundError):
                self.path_for(digest).unlink()
                removed_orphans += 1
            self.clear_marker(digest)
        return SweepReport(temp_files_removed=removed_temps, orphan_files_removed=removed_orphans)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return float("inf")
