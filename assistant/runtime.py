"""Opening the user's data: the one place settings become a repository."""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy.engine import make_url

from assistant.settings import Settings
from storage.db import StorageError
from storage.repository import RecoveryReport, Repository

log = logging.getLogger(__name__)


def open_repository(settings: Settings, *, recover: bool = True) -> Repository:
    """Create the data dir, upgrade the schema and sweep what an interrupted write left behind.

    The sweep (`Repository.recover`) removes temp files and image files a killed process
    renamed into the store but never committed, safely while other processes are mid-turn
    in the same data dir, and costs one listdir when there is nothing to do. When it finds
    something it logs one line saying what it removed and whether every stored image still
    has its file. `recover=False` opens without touching anything (`atelier doctor --no-sweep`).
    """
    _check_data_dir(settings)
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # the UI shows this line too, so no errno and no traceback
        raise StorageError(
            f"Cannot create the data folder {settings.data_dir}: {exc.strerror or exc}; "
            "point ATELIER_DATA_DIR somewhere writable."
        ) from None
    repo = Repository.open(settings.effective_database_url, settings.images_dir)
    if recover:
        report_recovery(repo.recover())
    return repo


def report_recovery(report: RecoveryReport) -> None:
    """The start-up sweep's log line: INFO when nothing was lost, WARNING when something was."""
    if report.nothing_lost and not report.found_leftovers:
        return
    log.log(logging.INFO if report.nothing_lost else logging.WARNING, report.summary())


def open_existing_repository(settings: Settings, *, recover: bool = True) -> Repository | None:
    """For commands that only look: None when there is no database yet, and nothing is created.

    `atelier show 999` on a fresh machine must say "no such image", not leave a data dir and an
    empty database behind. An existing database is opened as usual (upgraded if it is older).
    """
    _check_data_dir(settings)
    return open_repository(settings, recover=recover) if database_exists(settings) else None


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
