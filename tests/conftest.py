"""Shared fixtures: kept small and generic on purpose (other suites add their own)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from storage.repository import Repository


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Repository]:
    """A migrated repository on a real SQLite file, as the app opens it (no in-memory shortcuts)."""
    repository = Repository.open(f"sqlite:///{tmp_path / 'atelier.db'}", tmp_path / "images")
    yield repository
    repository.db.dispose()
