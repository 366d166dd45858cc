"""SQLAlchemy models: the record every edit, variation, replay and history view works from.

The schema itself is owned by the Alembic migrations in `storage/migrations/versions`;
these classes must match them (a test compares the two).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    """Naive UTC: SQLite keeps no zone, so every timestamp is UTC by convention."""
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON}


class Conversation(Base):
    __tablename__ = "conversations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)


class Message(Base):
    __tablename__ = "messages"
    __table_args__ = (Index("ix_messages_conversation", "conversation_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text)
    #: intent, target numbers, rewritten prompt, tool calls, errors: how the turn was understood
    plan: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    #: "ok", "failed" or "cancelled": a turn that did not finish stays visible with its reason
    status: Mapped[str] = mapped_column(String(16), default="ok")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Generation(Base):
    """One backend call, successful or not, so nothing the user asked for disappears."""

    __tablename__ = "generations"
    __table_args__ = (
        Index("ix_generations_conversation", "conversation_id"),
        Index("ix_generations_message", "message_id"),  # ON DELETE SET NULL from messages
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    message_id: Mapped[int | None] = mapped_column(
        ForeignKey("messages.id", ondelete="SET NULL"), nullable=True
    )
    operation: Mapped[str] = mapped_column(String(32))
    backend: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(200))
    prompt: Mapped[str] = mapped_column(Text, default="")
    negative_prompt: Mapped[str] = mapped_column(Text, default="")
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    duration_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)
    usage: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    cost_usd: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class GenerationInput(Base):
    """The images a call consumed (init, mask source, references): the full ancestry DAG."""

    __tablename__ = "generation_inputs"
    __table_args__ = (Index("ix_generation_inputs_image", "image_id"),)  # ON DELETE CASCADE from images

    generation_id: Mapped[int] = mapped_column(
        ForeignKey("generations.id", ondelete="CASCADE"), primary_key=True
    )
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    role: Mapped[str] = mapped_column(String(16), primary_key=True)


class Image(Base):
    __tablename__ = "images"
    __table_args__ = (
        UniqueConstraint("conversation_id", "number", name="uq_images_conversation_number"),
        Index("ix_images_parent", "parent_id"),
        Index("ix_images_created", "created_at"),
        Index("ix_images_sha256", "sha256"),
        # 0002: foreign keys SQLite must look up on every delete, and the gallery's filters
        Index("ix_images_message", "message_id"),
        Index("ix_images_generation", "generation_id"),
        Index("ix_images_mask_sha256", "mask_sha256"),
        Index("ix_images_backend", "backend"),
        Index("ix_images_operation", "operation"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    message_id: Mapped[int | None] = mapped_column(
        ForeignKey("messages.id", ondelete="SET NULL"), nullable=True
    )
    generation_id: Mapped[int | None] = mapped_column(
        ForeignKey("generations.id", ondelete="SET NULL"), nullable=True
    )
    #: the primary parent ("#4 came from #2"); null for fresh generations and uploads
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("images.id", ondelete="SET NULL"), nullable=True)
    #: what users call "#2": 1, 2, 3… per conversation, unique and gap-free
    number: Mapped[int] = mapped_column(Integer)
    operation: Mapped[str] = mapped_column(String(32))
    instruction: Mapped[str | None] = mapped_column(Text, nullable=True)
    prompt: Mapped[str] = mapped_column(Text, default="")
    negative_prompt: Mapped[str] = mapped_column(Text, default="")
    revised_prompt: Mapped[str | None] = mapped_column(Text, nullable=True)
    backend: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(200))
    seed: Mapped[int | None] = mapped_column(Integer, nullable=True)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    sha256: Mapped[str] = mapped_column(String(64))
    mask_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class IdHighWater(Base):
    """The highest id a table ever handed out, kept by a delete trigger (SQLite; see `storage.ids`)."""

    __tablename__ = "id_high_water"

    table_name: Mapped[str] = mapped_column(String(64), primary_key=True)
    max_id: Mapped[int] = mapped_column(Integer)
