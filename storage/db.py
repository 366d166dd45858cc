"""Engine, sessions and schema upgrades.

SQLite is the default and gets WAL, foreign keys and a busy timeout on every connection.
Write transactions start with `BEGIN IMMEDIATE`: with a deferred BEGIN, two writers that
both read first (e.g. "next image number") deadlock and one gets "database is locked" at
once, whatever the busy timeout. Any other SQLAlchemy URL works too.
"""

from __future__ import annotations

import logging
import random
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DatabaseError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

BUSY_TIMEOUT_MS = 30_000

log = logging.getLogger(__name__)


class StorageError(Exception):
    """A storage problem with a one-line message fit for the user."""


class DatabaseDamaged(StorageError):
    """SQLite reports the database file as corrupt ("database disk image is malformed")."""

    def __init__(self, message: str, detail: str) -> None:
        super().__init__(message)
        #: SQLite's own words, for `atelier doctor`'s report
        self.detail = detail


#: pip packages of the drivers SQLAlchemy's dialects import, by module name
DRIVER_PACKAGES = {
    "psycopg": "psycopg[binary]",
    "psycopg2": "psycopg2-binary",
    "asyncpg": "asyncpg",
    "pg8000": "pg8000",
    "MySQLdb": "mysqlclient",
    "pymysql": "PyMySQL",
    "mysql": "mysql-connector-python",
    "mariadb": "mariadb",
    "oracledb": "oracledb",
    "cx_Oracle": "cx_Oracle",
    "pyodbc": "pyodbc",
    "pymssql": "pymssql",
}

#: SQLite's result code for a corrupt file (SQLITE_CORRUPT)
_SQLITE_CORRUPT = 11


def is_corruption(exc: BaseException) -> bool:
    """True for SQLite's "database disk image is malformed" (and its other corruption reports)."""
    original = getattr(exc, "orig", None) or exc
    code = getattr(original, "sqlite_errorcode", None)
    if code is not None and code & 0xFF == _SQLITE_CORRUPT:
        return True
    detail = str(original).lower()
    return "malformed" in detail or "corrupt" in detail


def error_detail(exc: BaseException) -> str:
    """The first line of the driver's own message, without SQLAlchemy's SQL and parameters."""
    original = getattr(exc, "orig", None) or exc
    lines = str(original).strip().splitlines()
    return lines[0] if lines else type(original).__name__


def describe_database_error(exc: BaseException, url: str | None = None) -> str:
    """A one-line message for a database error met while running a command."""
    where = f" {safe_url(url)}" if url else ""
    detail = error_detail(exc)
    if is_corruption(exc):
        return (
            f"The database{where} is damaged ({detail}); run `atelier doctor` to see what can be "
            "saved, and restore from an export."
        )
    return f"Database error: {detail}"


def safe_url(url: str) -> str:
    """The URL as it may be shown: password hidden; something that is not a URL is not echoed."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(ATELIER_DATABASE_URL)"


def _is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def _create_engine(url: str, **options: Any) -> Engine:
    """`create_engine`, with a missing driver or an unknown dialect said in one line."""
    try:
        return create_engine(url, **options)
    except ImportError as exc:
        module = (exc.name or "").split(".")[0]
        package = DRIVER_PACKAGES.get(module, module)
        dialect = make_url(url).drivername
        raise StorageError(
            f"The database URL uses {dialect}, whose driver {module or 'module'} is not installed; "
            f"install it with `pip install '{package}'` (in Atelier's environment)."
        ) from None
    except ArgumentError as exc:  # NoSuchModuleError: a dialect SQLAlchemy does not know
        dialect = make_url(url).drivername
        raise StorageError(
            f"The database URL names {dialect!r}, which SQLAlchemy does not know ({error_detail(exc)}); "
            "check ATELIER_DATABASE_URL."
        ) from None


def _install_sqlite_pragmas(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy emit BEGIN itself (pysqlite's implicit BEGIN is always DEFERRED).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys = ON")
        _enable_wal(cursor)
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")


def _enable_wal(cursor: Any) -> None:
    """Switch to WAL, retrying while another process does the same.

    Two connections switching a fresh database to WAL at once both hold a shared lock and want
    an exclusive one: SQLite calls that a deadlock and fails one of them at once, ignoring the
    busy timeout. The switch is persistent, so the loser only has to try again.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(random.uniform(0.005, 0.05))


class Database:
    """One engine plus two session factories: reads (deferred) and writes (immediate)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = _is_sqlite(url)
        if self.is_sqlite:
            if (database := self.sqlite_file) is not None:
                folder = database.parent
                try:
                    folder.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise StorageError(
                        f"Cannot create the folder {folder} for the database: {exc.strerror or exc}."
                    ) from None
            self.engine = _create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})
            _install_sqlite_pragmas(self.engine)
            writer: Engine = self.engine.execution_options(sqlite_begin="IMMEDIATE")
        else:
            self.engine = _create_engine(url, pool_pre_ping=True)
            writer = self.engine
        self._read_sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._write_sessions = sessionmaker(writer, expire_on_commit=False)
        if self.is_sqlite:
            from storage.ids import number_new_rows_above_deleted_ones

            number_new_rows_above_deleted_ones(self._write_sessions)
        self._on_commit: list[Callable[[], None]] = []
        self._on_rollback: list[Callable[[], None]] = []

    @property
    def sqlite_file(self) -> Path | None:
        """The database's file on disk, or None for a server database or an in-memory one."""
        if not self.is_sqlite:
            return None
        database = make_url(self.url).database
        if not database or database == ":memory:" or database.startswith("file:"):
            return None
        return Path(database)

    def add_write_hooks(self, on_commit: Callable[[], None], on_rollback: Callable[[], None]) -> None:
        """Run `on_commit` after each `write()` transaction commits, `on_rollback` after one fails.

        Both run in the thread of the transaction. The file store uses them to drop the pending
        markers of the files a transaction wrote once its rows are durable.
        """
        self._on_commit.append(on_commit)
        self._on_rollback.append(on_rollback)

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self._read_sessions() as session, session.begin():
            yield session

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A transaction that holds the write lock from its first statement to commit."""
        try:
            with self._write_sessions() as session, session.begin():
                yield session
        except BaseException:
            for hook in self._on_rollback:
                hook()
            raise
        for hook in self._on_commit:
            try:
                hook()
            except Exception:  # committed is committed: a caller must never think it failed
                log.exception("after-commit hook failed")

    def upgrade(self) -> None:
        """Bring the schema to the newest migration; safe when several processes start at once."""
        from storage.migrations.runner import upgrade_to_head

        try:
            with self.engine.execution_options(sqlite_begin="IMMEDIATE").connect() as connection:
                upgrade_to_head(connection)
        except (DatabaseError, OperationalError) as exc:
            raise _describe_open_failure(self.url, exc) from None

    def dispose(self) -> None:
        self.engine.dispose()

    def check_connection(self) -> None:
        try:
            with self.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except (DatabaseError, OperationalError) as exc:
            raise _describe_open_failure(self.url, exc) from None


def _describe_open_failure(url: str, exc: Exception) -> StorageError:
    where = safe_url(url)
    detail = error_detail(exc)
    if "file is not a database" in detail or "not a database" in detail:
        return StorageError(
            f"{where} is not an SQLite database; point ATELIER_DATABASE_URL or ATELIER_DATA_DIR elsewhere."
        )
    if is_corruption(exc):
        return DatabaseDamaged(describe_database_error(exc, url), detail)
    return StorageError(f"Cannot open the database {where}: {detail}")
