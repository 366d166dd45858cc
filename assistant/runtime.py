"""Opening the user's data: the one place settings become a repository."""

from __future__ import annotations

from assistant.settings import Settings
from storage.repository import Repository


def open_repository(settings: Settings) -> Repository:
    """Create the data dir, upgrade the schema and clear temp files an earlier crash left behind.

    Only the temp folder is swept here (cheap at any library size); a full rows ↔ files
    check, which also removes files a crash left without a row, is `atelier doctor`.
    """
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    repo = Repository.open(settings.effective_database_url, settings.images_dir)
    repo.files.sweep_temp_files()
    return repo
