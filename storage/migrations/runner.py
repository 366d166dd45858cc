"""Runs the Alembic migrations in-process, without an alembic.ini next to the user's data.

Migrations are append-only and named (`0001_initial`, `0002_…`): an old step is never edited,
so a database from any released version upgrades by the same path.
"""

from __future__ import annotations

import threading
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection

MIGRATIONS_DIR = Path(__file__).resolve().parent
#: Alembic keeps its `context`/`op` proxies in module globals, so two threads must never
#: migrate at once; other processes are kept apart by the BEGIN IMMEDIATE around it.
_MIGRATION_LOCK = threading.Lock()


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def upgrade_to_head(connection: Connection) -> None:
    with _MIGRATION_LOCK:
        command.upgrade(alembic_config(connection), "head")


def upgrade_to(connection: Connection, revision: str) -> None:
    """Used by tests to build a database as an earlier release left it."""
    with _MIGRATION_LOCK:
        command.upgrade(alembic_config(connection), revision)
