"""Opening the user's data: the one place settings become a repository."""

from __future__ import annotations

from assistant.settings import Settings
from storage.repository import Repository


def open_repository(settings: Settings) -> Repository:
    """Create the data dir, upgrade the schema and sweep what an earlier crash left behind."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    repo = Repository.open(settings.effective_database_url, settings.images_dir)
    repo.sweep()
    return repo
