"""Opening the user's data: the one place settings become a repository."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import make_url

from assistant.settings import Settings
from storage.db import StorageError
from storage.repository import Repository


def open_repository(settings: Settings) -> Repository:
    """Create the data dir, upgrade the schema and clear temp files an earlier crash left behind.

    Only the temp folder is swept here (cheap at any library size); a full rows ↔ files
    check, which also removes files a crash left without a row, is `atelier doctor`.
    """
    _check_data_dir(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    repo = Repository.open(settings.effective_database_url, settings.images_dir)
    repo.files.sweep_temp_files()
    return repo


def open_existing_repository(settings: Settings) -> Repository | None:
    """For commands that only look: None when there is no database yet, and nothing is created.

    `atelier show 999` on a fresh machine must say "no such image", not leave a data dir and an
    empty database behind. An existing database is opened as usual (upgraded if it is older).
    """
    _check_data_dir(settings)
    return open_repository(settings) if database_exists(settings) else None


def database_exists(settings: Settings) -> bool:
    """False only for an SQLite file that is not there yet; any other database is assumed to exist."""
    url = make_url(settings.effective_database_url)
    if url.get_backend_name() != "sqlite":
        return True
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return True
    return Path(database).exists()


def _check_data_dir(settings: Settings) -> None:
    if settings.data_dir.exists() and not settings.data_dir.is_dir():
        raise StorageError(
            f"The data dir {settings.data_dir} is a file, not a folder; "
            "point ATELIER_DATA_DIR somewhere else."
        )
