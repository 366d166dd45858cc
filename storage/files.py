"""Content-addressed image files: `<root>/ab/abcdef….png`.

Bytes go to a temp file in `<root>/.tmp/`, are fsynced, then renamed into place, so a
reader never sees half a file and a crash leaves at most a `*.tmp` there. Keeping temp
files in one small folder lets every start clear them without walking the whole library.
The repository writes the file before committing the row that names it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

TEMP_SUFFIX = ".tmp"
_HEX64 = re.compile(r"[0-9a-f]{64}")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class SweepReport:
    temp_files_removed: int
    orphan_files_removed: int


class ImageFileStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.temp_dir = root / ".tmp"

    def path_for(self, sha256: str) -> Path:
        if not _HEX64.fullmatch(sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self.root / sha256[:2] / f"{sha256}.png"

    def put(self, data: bytes) -> str:
        """Store bytes under their hash; storing the same bytes twice is a no-op."""
        digest = sha256_hex(data)
        target = self.path_for(digest)
        if target.exists():
            return digest
        target.parent.mkdir(parents=True, exist_ok=True)
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        fd, temp_name = tempfile.mkstemp(dir=self.temp_dir, prefix=f"{digest[:8]}-", suffix=TEMP_SUFFIX)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp_name, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp_name)
            raise
        return digest

    def read(self, sha256: str) -> bytes:
        return self.path_for(sha256).read_bytes()

    def exists(self, sha256: str) -> bool:
        return self.path_for(sha256).exists()

    def delete(self, sha256: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path_for(sha256).unlink()

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

    def sweep_temp_files(self, *, grace_seconds: float = 3600.0) -> int:
        """Cheap start-up cleanup: only the temp folder, never the library."""
        cutoff = time.time() - grace_seconds
        return self.remove([t for t in self.temp_files() if _mtime(t) <= cutoff], []).temp_files_removed

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
        return SweepReport(temp_files_removed=removed_temps, orphan_files_removed=removed_orphans)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return float("inf")
