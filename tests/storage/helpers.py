"""Small builders and probes shared by the storage tests (not fixtures: plain functions)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from PIL import Image as PILImage
from sqlalchemy import Engine, event, text

from storage.models import Image
from storage.repository import NewGeneration, NewImage, Repository

#: Statements that are transaction or connection plumbing, not queries the caller asked for.
_PLUMBING = ("BEGIN", "COMMIT", "ROLLBACK", "PRAGMA", "SAVEPOINT", "RELEASE")


def tiny_image(index: int, size: int = 8) -> PILImage.Image:
    """An 8×8 image whose colour depends on `index`, so different calls give different pixels."""
    return PILImage.new("RGB", (size, size), (index * 37 % 256, index * 91 % 256, index * 13 % 256))


def add_generated(
    repo: Repository,
    conversation_id: int,
    prompt: str,
    *,
    parent_id: int | None = None,
    operation: str | None = None,
    instruction: str | None = None,
    revised_prompt: str | None = None,
    seed: int | None = 7,
    index: int = 0,
    params: Mapping[str, Any] | None = None,
    negative_prompt: str = "",
    model: str = "tiny-model",
) -> Image:
    """One assistant turn that produced one image, the way the assistant records it."""
    op = operation or ("generate" if parent_id is None else "edit")
    new_image = NewImage(
        image=tiny_image(index),
        operation=op,
        backend="offline",
        model=model,
        prompt=prompt,
        negative_prompt=negative_prompt,
        instruction=instruction,
        revised_prompt=revised_prompt,
        seed=seed,
        params=dict(params or {"steps": 4}),
        parent_id=parent_id,
    )
    generation = NewGeneration(
        operation=op,
        backend="offline",
        model=model,
        prompt=prompt,
        negative_prompt=negative_prompt,
        params=dict(params or {"steps": 4}),
        inputs=[(parent_id, "init")] if parent_id is not None else (),
        images=[new_image],
    )
    record = repo.record_turn(conversation_id, reply=f"Here is: {prompt}", generations=[generation])
    return record.images[0]


@contextmanager
def statements(engine: Engine) -> Iterator[list[str]]:
    """Collect the SQL statements run on `engine` inside the block, minus BEGIN/PRAGMA plumbing."""
    seen: list[str] = []

    def _record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if not statement.lstrip().upper().startswith(_PLUMBING):
            seen.append(statement)

    event.listen(engine, "before_cursor_execute", _record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", _record)


def table_rows(repo: Repository, table: str, order_by: str = "rowid") -> list[dict[str, Any]]:
    """Every column of every row exactly as SQLite stores it (no ORM conversion in between)."""
    with repo.db.engine.connect() as connection:
        result = connection.execute(text(f"SELECT * FROM {table} ORDER BY {order_by}"))
        return [dict(row._mapping) for row in result]


def row_count(repo: Repository, table: str) -> int:
    with repo.db.engine.connect() as connection:
        return int(connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


def files_on_disk(root: Path) -> dict[str, bytes]:
    """Every file under `root` (temp files included) by relative path, with its bytes."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def numbers_by_conversation(repo: Repository) -> dict[int, list[int]]:
    with repo.db.engine.connect() as connection:
        rows = connection.execute(text("SELECT conversation_id, number FROM images ORDER BY 1, 2")).all()
    grouped: dict[int, list[int]] = {}
    for conversation_id, number in rows:
        grouped.setdefault(conversation_id, []).append(number)
    return grouped


def ids(images: Sequence[Image]) -> list[int]:
    return [image.id for image in images]
