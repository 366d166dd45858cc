"""Initial schema: conversations, messages, generations, images, generation inputs, FTS.

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "conversations",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
    )
    op.create_table(
        "messages",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "conversation_id",
            sa.Integer(),
            sa.ForeignKey("conversations.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("plan", sa.JSON(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_messages_conversation", "messages", ["conversation_id", "id"])
    op.create_table(
        "generations",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "conversation_id",
            sa.Integer(),
            sa.ForeignKey("conversations.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("message_id", sa.Integer(), sa.ForeignKey("messages.id", ondelete="SET NULL")),
        sa.Column("operation", sa.String(32), nullable=False),
        sa.Column("backend", sa.String(64), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("negative_prompt", sa.Text(), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text()),
        sa.Column("duration_ms", sa.Integer()),
        sa.Column("usage", sa.JSON()),
        sa.Column("cost_usd", sa.Float()),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_generations_conversation", "generations", ["conversation_id"])
    op.create_table(
        "images",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "conversation_id",
            sa.Integer(),
            sa.ForeignKey("conversations.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("message_id", sa.Integer(), sa.ForeignKey("messages.id", ondelete="SET NULL")),
        sa.Column("generation_id", sa.Integer(), sa.ForeignKey("generations.id", ondelete="SET NULL")),
        sa.Column("parent_id", sa.Integer(), sa.ForeignKey("images.id", ondelete="SET NULL")),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("operation", sa.String(32), nullable=False),
        sa.Column("instruction", sa.Text()),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("negative_prompt", sa.Text(), nullable=False),
        sa.Column("revised_prompt", sa.Text()),
        sa.Column("backend", sa.String(64), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("seed", sa.Integer()),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("mask_sha256", sa.String(64)),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("conversation_id", "number", name="uq_images_conversation_number"),
    )
    op.create_index("ix_images_parent", "images", ["parent_id"])
    op.create_index("ix_images_created", "images", ["created_at"])
    op.create_index("ix_images_sha256", "images", ["sha256"])
    op.create_table(
        "generation_inputs",
        sa.Column(
            "generation_id",
            sa.Integer(),
            sa.ForeignKey("generations.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("image_id", sa.Integer(), sa.ForeignKey("images.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("role", sa.String(16), primary_key=True),
    )

    if op.get_bind().dialect.name == "sqlite":
        # Full-text search over what people remember an image by: their words and the prompts.
        # External-content FTS5 table kept current by triggers, so no code path can forget it.
        op.execute(
            "CREATE VIRTUAL TABLE images_fts USING fts5("
            "instruction, prompt, revised_prompt, content='images', content_rowid='id', "
            "tokenize='porter unicode61')"
        )
        op.execute(
            "CREATE TRIGGER images_fts_insert AFTER INSERT ON images BEGIN "
            "INSERT INTO images_fts(rowid, instruction, prompt, revised_prompt) "
            "VALUES (new.id, new.instruction, new.prompt, new.revised_prompt); END"
        )
        op.execute(
            "CREATE TRIGGER images_fts_delete AFTER DELETE ON images BEGIN "
            "INSERT INTO images_fts(images_fts, rowid, instruction, prompt, revised_prompt) "
            "VALUES ('delete', old.id, old.instruction, old.prompt, old.revised_prompt); END"
        )
        op.execute(
            "CREATE TRIGGER images_fts_update AFTER UPDATE OF instruction, prompt, revised_prompt "
            "ON images BEGIN "
            "INSERT INTO images_fts(images_fts, rowid, instruction, prompt, revised_prompt) "
            "VALUES ('delete', old.id, old.instruction, old.prompt, old.revised_prompt); "
            "INSERT INTO images_fts(rowid, instruction, prompt, revised_prompt) "
            "VALUES (new.id, new.instruction, new.prompt, new.revised_prompt); END"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TABLE IF EXISTS images_fts")
    op.drop_table("generation_inputs")
    op.drop_table("images")
    op.drop_table("generations")
    op.drop_table("messages")
    op.drop_table("conversations")
