"""Indexes for foreign-key lookups on delete and for the gallery's filters.

Without them, deleting one conversation made SQLite scan `images`, `generations` and
`generation_inputs` once per deleted message, generation and image (seconds for a
20-image conversation in a 100,000-image library, holding the write lock all along), and
a gallery filter on a rare backend or operation scanned every image.

Revision ID: 0002_lookup_indexes
Revises: 0001_initial
Create Date: 2026-11-23
"""

from __future__ import annotations

from alembic import op

revision = "0002_lookup_indexes"
down_revision = "0001_initial"
branch_labels = None
depends_on = None

INDEXES = (
    ("ix_images_message", "images", ["message_id"]),
    ("ix_images_generation", "images", ["generation_id"]),
    ("ix_images_mask_sha256", "images", ["mask_sha256"]),
    ("ix_images_backend", "images", ["backend"]),
    ("ix_images_operation", "images", ["operation"]),
    ("ix_generations_message", "generations", ["message_id"]),
    ("ix_generation_inputs_image", "generation_inputs", ["image_id"]),
)


def upgrade() -> None:
    for name, table, columns in INDEXES:
        op.create_index(name, table, columns)


def downgrade() -> None:
    for name, table, _ in reversed(INDEXES):
        op.drop_index(name, table_name=table)
