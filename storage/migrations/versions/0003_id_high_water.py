"""Ids are never reused: the highest id each table ever handed out survives deletes.

SQLite gives a new row max(id) + 1, so deleting the newest conversation (or image) and
making another reused its id: an old link (`?c=12`, `atelier show 63`) then opened a
different conversation or image instead of saying it is gone. AUTOINCREMENT would need
every table rebuilt, and a rebuild drops and re-creates tables that foreign keys with
ON DELETE CASCADE point at, inside the migration's transaction, where SQLite cannot switch
foreign keys off. So a delete trigger keeps each table's highest deleted id here instead,
and new rows are numbered above both (`storage.ids`). Other databases use sequences, which
never go back, and get neither the triggers nor the numbering.

Revision ID: 0003_id_high_water
Revises: 0002_lookup_indexes
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_id_high_water"
down_revision = "0002_lookup_indexes"
branch_labels = None
depends_on = None

TABLES = ("conversations", "messages", "generations", "images")


def upgrade() -> None:
    op.create_table(
        "id_high_water",
        sa.Column("table_name", sa.String(64), primary_key=True),
        sa.Column("max_id", sa.Integer(), nullable=False),
    )
    if op.get_bind().dialect.name != "sqlite":
        return
    for table in TABLES:
        op.execute(
            f"CREATE TRIGGER {table}_keep_max_id AFTER DELETE ON {table} BEGIN "
            f"INSERT INTO id_high_water (table_name, max_id) VALUES ('{table}', old.id) "
            "ON CONFLICT (table_name) DO UPDATE SET max_id = max(max_id, excluded.max_id); END"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for table in TABLES:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_keep_max_id")
    op.drop_table("id_high_water")
