"""New rows are numbered above every id a table ever had, so a deleted row's id is never reused.

SQLite numbers a row max(id) + 1: delete the newest conversation and the next one gets its
id, and a link or note that named the old one silently shows the new one. The delete
triggers of migration 0003 keep each table's highest deleted id in `id_high_water`; before
each flush of a SQLite session, rows without an id get the next number above both. Writes
hold SQLite's write lock from their first statement (BEGIN IMMEDIATE), so two writers
cannot take the same number.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event, text
from sqlalchemy.orm import Session, sessionmaker

from storage.models import Conversation, Generation, Image, Message

NUMBERED = (Conversation, Message, Generation, Image)
_NEXT = {
    model: text(
        f"SELECT max(coalesce((SELECT max(id) FROM {model.__tablename__}), 0), "
        "coalesce((SELECT max_id FROM id_high_water WHERE table_name = :table), 0)) + 1"
    ).bindparams(table=model.__tablename__)
    for model in NUMBERED
}
#: a database still on a schema before 0003 (opened without upgrading) has no such table
_HAS_TABLE = text("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'id_high_water'")


def number_new_rows_above_deleted_ones(sessions: sessionmaker[Session]) -> None:
    event.listen(sessions, "before_flush", _number_new_rows)


def _number_new_rows(session: Session, _context: Any, _instances: Any) -> None:
    pending = [row for row in session.new if isinstance(row, NUMBERED) and row.id is None]
    if not pending:
        return
    connection = session.connection()
    if connection.execute(_HAS_TABLE).first() is None:
        return  # SQLite's own max(id) + 1, as before the migration
    next_ids: dict[type, int] = {}
    for row in pending:
        model = type(row)
        if model not in next_ids:
            next_ids[model] = int(connection.execute(_NEXT[model]).scalar_one())
        row.id = next_ids[model]
        next_ids[model] += 1
