"""The repository: every read and write the rest of Atelier makes to rows and files.

Rows (SQLAlchemy) and bytes (`ImageFileStore`) are two services; the functions here are the
one place that keeps them consistent: a file is written before the row that names it
commits, a failed transaction removes the files it wrote, and `sweep` clears what a crash
left behind. Lineage queries are single recursive CTEs.
"""

from __future__ import annotations

import contextlib
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from PIL import Image as PILImage
from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    bindparam,
    delete,
    func,
    not_,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from storage.db import Database, StorageError, error_detail
from storage.files import ImageFileStore, SweepReport, sha256_hex
from storage.models import Conversation, Generation, GenerationInput, Image, Message, utcnow
from storage.pngmeta import encode_png, format_infotext

MAX_LINEAGE_DEPTH = 10_000
#: how many words of a conversation search count (each must match); more only slow it down
MAX_SEARCH_WORDS = 8
#: ids bound in one IN (...): well under SQLite's limit on variables per statement
_IDS_PER_STATEMENT = 500

ROW_ID_MIN, ROW_ID_MAX = -(2**63), 2**63 - 1


class NotFound(StorageError):
    pass


class ImageFileDamaged(StorageError):
    """An image row whose file is gone or no longer a readable picture: said once, the same everywhere."""


@dataclass
class NewImage:
    """An image to store, with everything needed to explain and replay it."""

    image: PILImage.Image
    operation: str
    backend: str
    model: str
    prompt: str = ""
    negative_prompt: str = ""
    instruction: str | None = None
    revised_prompt: str | None = None
    seed: int | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    parent_id: int | None = None
    mask: PILImage.Image | None = None
    #: the parent when it is stored by the same `record_turn` (a replayed chain), so has no id yet
    parent: NewImage | None = None


@dataclass
class NewGeneration:
    """One backend call and what it produced (nothing, when it failed)."""

    operation: str
    backend: str
    model: str
    status: str = "ok"
    prompt: str = ""
    negative_prompt: str = ""
    params: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None
    duration_ms: int | None = None
    usage: Mapping[str, Any] | None = None
    cost_usd: float | None = None
    #: (image id, role) with role init | mask | reference; a NewImage stored by the same call
    inputs: Sequence[tuple[int | NewImage, str]] = ()
    images: Sequence[NewImage] = ()


@dataclass(frozen=True)
class TurnRecord:
    message: Message | None
    images: list[Image]


@dataclass(frozen=True)
class LineageNode:
    image: Image
    depth: int


@dataclass(frozen=True)
class IntegrityReport:
    """Rows ↔ files ↔ hashes. Two kinds of finding, kept apart:

    * loss: a row whose file (or mask) is missing, a file whose bytes no longer match its hash,
      a damaged database. Nothing a crash may leave; `nothing_lost` is False.
    * leftovers to sweep: temp files, files no row names (a write that never committed),
      pending markers. Harmless, and removed by the next start or `atelier doctor`.
    """

    images_checked: int
    missing_files: list[int]
    hash_mismatches: list[int]
    orphan_files: list[str]
    temp_files: list[str]
    #: hashes with a pending marker: writes that had not settled when their process stopped
    unfinished_writes: list[str] = field(default_factory=list)
    #: what SQLite's integrity and foreign-key checks report (empty when fine)
    database_errors: list[str] = field(default_factory=list)

    @property
    def nothing_lost(self) -> bool:
        return not (self.missing_files or self.hash_mismatches or self.database_errors)

    @property
    def ok(self) -> bool:
        """Nothing lost and nothing left to sweep."""
        return self.nothing_lost and not (self.orphan_files or self.temp_files or self.unfinished_writes)

    def problems(self) -> list[str]:
        """One line per loss, for people; empty when nothing is lost."""
        lines = [f"image {image_id}: its file is missing" for image_id in self.missing_files]
        lines += [f"image {image_id}: its file does not match its hash" for image_id in self.hash_mismatches]
        lines += [f"database: {error}" for error in self.database_errors]
        return lines


@dataclass(frozen=True)
class RecoveryReport:
    """What `Repository.recover` (the start-up sweep) found and did."""

    temp_files_removed: int = 0
    #: files renamed into the store whose row never committed
    orphan_files_removed: int = 0
    #: files whose write committed just before its process stopped: kept, hash verified
    committed_files_kept: int = 0
    #: stored images whose files were checked for presence (0 when there was nothing to sweep)
    images_checked: int = 0
    missing_files: list[int] = field(default_factory=list)
    hash_mismatches: list[int] = field(default_factory=list)

    @property
    def found_leftovers(self) -> bool:
        """A write died before its commit. (A committed file's marker alone is no sign of that:
        a start racing a live writer can see one between its commit and its cleanup.)"""
        return bool(self.temp_files_removed or self.orphan_files_removed)

    @property
    def nothing_lost(self) -> bool:
        return not (self.missing_files or self.hash_mismatches)

    def summary(self) -> str:
        if not (self.found_leftovers or not self.nothing_lost):
            return "Start-up check: no interrupted writes to clean up."
        done = [
            _plural(self.temp_files_removed, "temp file"),
            _plural(self.orphan_files_removed, "orphan image file"),
        ]
        text = f"Start-up sweep: removed {done[0]} and {done[1]} left by an interrupted write"
        if self.committed_files_kept:
            text += f"; kept {_plural(self.committed_files_kept, 'file')} whose row had committed"
        if self.nothing_lost:
            return text + (
                f"; all {_plural(self.images_checked, 'stored image')} have their files, nothing lost."
            )
        lost = ", ".join(str(i) for i in sorted({*self.missing_files, *self.hash_mismatches}))
        return text + f"; PROBLEMS: images {lost} have a missing or damaged file. Run `atelier doctor`."


@dataclass(frozen=True)
class ImageFilter:
    conversation_id: int | None = None
    backend: str | None = None
    operation: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    query: str | None = None


def image_infotext(image: Image) -> str:
    """The A1111 `parameters` text for a stored image, from its row.

    An upload's stored copy keeps what its own file said (A1111's Steps, Sampler, CFG scale,
    Seed, Model…), so it can be pasted back into the program that made it."""
    params = dict(image.params or {})
    if image.operation == "upload":
        embedded = {
            str(key): value
            for key, value in dict(params.get("embedded") or {}).items()
            if isinstance(value, str | int | float)
            and key not in ("Size", "Operation", "Backend")
            and re.fullmatch(r"\w[\w \-/+]*", str(key))  # a key the infotext line can hold
        }
        own = {"Size": f"{image.width}x{image.height}", "Operation": "upload"}
        return format_infotext(image.prompt, image.negative_prompt, {**embedded, **own})
    fields: dict[str, Any] = {
        "Steps": params.get("steps"),
        "Sampler": params.get("sampler") or params.get("scheduler"),
        "CFG scale": params.get("guidance"),
        "Seed": image.seed,
        "Size": f"{image.width}x{image.height}",
        "Model": image.model,
        "Backend": image.backend,
        "Denoising strength": params.get("strength"),
        "Operation": image.operation,
    }
    return format_infotext(image.prompt, image.negative_prompt, fields)


def image_lineage_chunk(image: Image) -> dict[str, Any]:
    return {
        "id": image.id,
        "conversation_id": image.conversation_id,
        "number": image.number,
        "parent_id": image.parent_id,
        "operation": image.operation,
        "instruction": image.instruction,
        "revised_prompt": image.revised_prompt,
    }


class Repository:
    def __init__(self, db: Database, files: ImageFileStore) -> None:
        self.db = db
        self.files = files
        # A write's pending markers go when its transaction commits (see storage.files).
        db.add_write_hooks(files.settle_pending, files.forget_pending)

    @classmethod
    def open(cls, database_url: str, images_dir: Path) -> Repository:
        """Open (and upgrade) a database; the app calls this once at start."""
        db = Database(database_url)
        db.upgrade()
        return cls(db, ImageFileStore(images_dir))

    # ----- conversations ---------------------------------------------------------------

    def create_conversation(self, title: str = "New conversation") -> Conversation:
        with self.db.write() as session:
            conversation = Conversation(title=_clean_title(title))
            session.add(conversation)
            session.flush()
            return conversation

    def get_conversation(self, conversation_id: int) -> Conversation:
        _check_row_id(conversation_id, f"There is no conversation {conversation_id}.")
        with self.db.read() as session:
            conversation = session.get(Conversation, conversation_id)
            if conversation is None:
                raise NotFound(f"There is no conversation {conversation_id}.")
            return conversation

    def list_conversations(
        self, limit: int = 200, offset: int = 0, query: str | None = None
    ) -> list[Conversation]:
        """Most recently active first (then newest id), `limit` of them from `offset`.

        With a `query`, only the conversations where every word of it (see `search_words`)
        appears, ignoring case, in the title or in one of its messages: what the user typed
        and what the assistant answered. Parts of words match ("ighthous"); `%` and `_` are
        literal characters, never wildcards. A query with no words lists them all.
        """
        statement = select(Conversation)
        # Messages have no full-text index, so each word is a LIKE over them, in one of two
        # shapes. A word of three letters or more is usually rare: an uncorrelated IN reads
        # `messages` once, in table order, into a set of conversation ids (a correlated EXISTS
        # would walk every conversation's messages by index and rowid: several times slower
        # when few match). A word of one or two letters matches nearly everywhere: an EXISTS
        # stops at each conversation's first match, where the IN would collect every message.
        # Short words go last, so they only look at conversations the long ones let through.
        for word in sorted(search_words(query or ""), key=lambda word: len(word) <= 2):
            contained = self._contains(Message.content, word)
            in_messages: ColumnElement[bool]
            if len(word) > 2:
                in_messages = Conversation.id.in_(select(Message.conversation_id).where(contained))
            else:
                in_messages = (
                    select(Message.id).where(Message.conversation_id == Conversation.id, contained).exists()
                )
            statement = statement.where(or_(self._contains(Conversation.title, word), in_messages))
        statement = statement.order_by(Conversation.updated_at.desc(), Conversation.id.desc())
        with self.db.read() as session:
            return list(session.scalars(statement.limit(limit).offset(offset)))

    def conversation_titles(self, conversation_ids: Iterable[int]) -> dict[int, str]:
        """Titles by id for the given conversations; ids that name none are left out."""
        wanted = sorted(set(conversation_ids))
        titles: dict[int, str] = {}
        with self.db.read() as session:
            for start in range(0, len(wanted), _IDS_PER_STATEMENT):
                chunk = wanted[start : start + _IDS_PER_STATEMENT]
                rows = session.execute(
                    select(Conversation.id, Conversation.title).where(Conversation.id.in_(chunk))
                )
                titles.update({row.id: row.title for row in rows})
        return titles

    def _contains(self, column: Any, word: str) -> Any:
        """`column` contains `word` (lower-case) ignoring case, LIKE's wildcards escaped.

        SQLite's LIKE already ignores case, so the column is compared as stored rather than
        through lower() row by row; but only ASCII case, so a word with other letters is also
        tried as typed in capitals and capitalised ("élodie": "ÉLODIE", "Élodie"). Elsewhere
        it is ILIKE (or lower() LIKE), which knows every alphabet.
        """
        if not self.db.is_sqlite:
            return column.icontains(word, autoescape=True)
        if word.isascii():
            return column.contains(word, autoescape=True)
        spellings = dict.fromkeys((word, word.upper(), word.capitalize()))
        return or_(*(column.contains(spelling, autoescape=True) for spelling in spellings))

    def rename_conversation(self, conversation_id: int, title: str) -> Conversation:
        _check_row_id(conversation_id, f"There is no conversation {conversation_id}.")
        with self.db.write() as session:
            conversation = session.get(Conversation, conversation_id)
            if conversation is None:
                raise NotFound(f"There is no conversation {conversation_id}.")
            conversation.title = _clean_title(title)
            return conversation

    def delete_conversation(self, conversation_id: int) -> int:
        """Delete a conversation with its rows; its files go unless another row still uses them.

        Returns the number of files removed.
        """
        _check_row_id(conversation_id, f"There is no conversation {conversation_id}.")
        with self.db.write() as session:
            if session.get(Conversation, conversation_id) is None:
                raise NotFound(f"There is no conversation {conversation_id}.")
            rows = session.execute(
                select(Image.sha256, Image.mask_sha256).where(Image.conversation_id == conversation_id)
            ).all()
            hashes = {h for row in rows for h in row if h}
            session.execute(delete(Conversation).where(Conversation.id == conversation_id))
            candidates = hashes - self._referenced_hashes(session, hashes)
        if not candidates:
            return 0
        # Files go only after the rows are gone for good (a failed commit must not leave rows
        # without files), and only under the write lock again, re-checked: a turn that committed
        # in between may have saved the same bytes (a shared mask, say) and found the file
        # already there. Holding the lock, no other writer can be between "file exists" and
        # its commit, so what no row names now is truly unused.
        with self.db.write() as session:
            still_used = self._referenced_hashes(session, candidates)
            unused = sorted(candidates - still_used)
            for digest in unused:
                self.files.delete(digest)
        return len(unused)

    # ----- messages --------------------------------------------------------------------

    def add_message(
        self,
        conversation_id: int,
        role: str,
        content: str,
        plan: Mapping[str, Any] | None = None,
        status: str = "ok",
    ) -> Message:
        _check_row_id(conversation_id, f"There is no conversation {conversation_id}.")
        with self.db.write() as session:
            self._touch_conversation(session, conversation_id)
            message = Message(
                conversation_id=conversation_id,
                role=role,
                content=content,
                plan=dict(plan) if plan is not None else None,
                status=status,
            )
            session.add(message)
            session.flush()
            return message

    def messages(self, conversation_id: int, limit: int | None = None) -> list[Message]:
        """Oldest first; with `limit`, the newest `limit` messages (still oldest first)."""
        if not is_row_id(conversation_id):
            return []
        with self.db.read() as session:
            query = select(Message).where(Message.conversation_id == conversation_id)
            if limit is None:
                return list(session.scalars(query.order_by(Message.id)))
            newest = list(session.scalars(query.order_by(Message.id.desc()).limit(limit)))
            return newest[::-1]

    # ----- images: writing ------------------------------------------------------------

    def save_upload(
        self,
        conversation_id: int,
        message_id: int | None,
        image: PILImage.Image,
        instruction: str | None,
        *,
        prompt: str = "",
        negative_prompt: str = "",
        params: Mapping[str, Any] | None = None,
    ) -> Image:
        """`prompt`, `negative_prompt` and `params` are what the file itself says made it."""
        record = self.record_turn(
            conversation_id,
            images=[
                NewImage(
                    image=image,
                    operation="upload",
                    backend="upload",
                    model="",
                    instruction=instruction,
                    prompt=prompt,
                    negative_prompt=negative_prompt,
                    params=dict(params or {}),
                )
            ],
            images_message_id=message_id,
        )
        return record.images[0]

    def record_turn(
        self,
        conversation_id: int,
        *,
        reply: str | None = None,
        plan: Mapping[str, Any] | None = None,
        status: str = "ok",
        generations: Sequence[NewGeneration] = (),
        images: Sequence[NewImage] = (),
        images_message_id: int | None = None,
    ) -> TurnRecord:
        """Store an assistant reply, the backend calls and their images in one transaction.

        Images of `generations` and loose `images` (transforms, uploads) get the next numbers
        of the conversation. Files are written inside the transaction before commit; if
        anything fails, the files this call created are removed and no row remains.
        """
        created_files: list[str] = []
        try:
            with self.db.write() as session:
                self._lock_conversation(session, conversation_id)
                message: Message | None = None
                if reply is not None:
                    message = Message(
                        conversation_id=conversation_id,
                        role="assistant",
                        content=reply,
                        plan=dict(plan) if plan is not None else None,
                        status=status,
                    )
                    session.add(message)
                    session.flush()
                message_id = message.id if message is not None else images_message_id
                next_number = self._next_number(session, conversation_id)
                saved: list[Image] = []
                stored: dict[int, Image] = {}  # id(NewImage) -> its row, for references within the turn
                for item in _in_dependency_order([*generations, *images]):
                    generation_id: int | None = None
                    new_images: Sequence[NewImage] = (item,) if isinstance(item, NewImage) else item.images
                    if isinstance(item, NewGeneration):
                        inputs = [(_stored_id(ref, stored), role) for ref, role in item.inputs]
                        generation = self._insert_generation(
                            session, conversation_id, message_id, item, inputs
                        )
                        generation_id = generation.id
                    for original in new_images:
                        new_image = original
                        if original.parent is not None:
                            new_image = replace(original, parent_id=_stored_id(original.parent, stored))
                        row = self._insert_image(
                            session,
                            conversation_id,
                            message_id,
                            generation_id,
                            next_number,
                            new_image,
                            created_files,
                        )
                        stored[id(original)] = row
                        next_number += 1
                        saved.append(row)
                self._touch_conversation(session, conversation_id)
        except BaseException:
            for digest in created_files:
                self.files.delete(digest)
            raise
        return TurnRecord(message=message, images=saved)

    def _insert_generation(
        self,
        session: Session,
        conversation_id: int,
        message_id: int | None,
        new: NewGeneration,
        inputs: Sequence[tuple[int, str]],
    ) -> Generation:
        generation = Generation(
            conversation_id=conversation_id,
            message_id=message_id,
            operation=new.operation,
            backend=new.backend,
            model=new.model,
            prompt=new.prompt,
            negative_prompt=new.negative_prompt,
            params=dict(new.params),
            status=new.status,
            error=new.error,
            duration_ms=new.duration_ms,
            usage=dict(new.usage) if new.usage is not None else None,
            cost_usd=new.cost_usd,
        )
        session.add(generation)
        session.flush()
        seen: set[tuple[int, str]] = set()
        for image_id, role in inputs:
            if (image_id, role) in seen:
                continue
            seen.add((image_id, role))
            session.add(GenerationInput(generation_id=generation.id, image_id=image_id, role=role))
        return generation

    def _insert_image(
        self,
        session: Session,
        conversation_id: int,
        message_id: int | None,
        generation_id: int | None,
        number: int,
        new: NewImage,
        created_files: list[str],
    ) -> Image:
        if new.parent_id is not None and session.get(Image, new.parent_id) is None:
            raise NotFound(f"There is no image {new.parent_id} to derive from.")
        row = Image(
            conversation_id=conversation_id,
            message_id=message_id,
            generation_id=generation_id,
            parent_id=new.parent_id,
            number=number,
            operation=new.operation,
            instruction=new.instruction,
            prompt=new.prompt,
            negative_prompt=new.negative_prompt,
            revised_prompt=new.revised_prompt,
            backend=new.backend,
            model=new.model,
            seed=new.seed,
            width=new.image.width,
            height=new.image.height,
            params=dict(new.params),
            sha256="",
        )
        session.add(row)
        session.flush()
        if new.mask is not None:
            row.mask_sha256 = self._put(encode_png(new.mask, None, None), created_files)
        data = encode_png(new.image, image_infotext(row), image_lineage_chunk(row))
        row.sha256 = self._put(data, created_files)
        session.flush()
        return row

    def _put(self, data: bytes, created_files: list[str]) -> str:
        from storage.files import sha256_hex

        digest = sha256_hex(data)
        existed = self.files.exists(digest)
        self.files.put(data)
        if not existed:
            created_files.append(digest)
        return digest

    def record_failure(
        self,
        conversation_id: int,
        *,
        reply: str,
        plan: Mapping[str, Any] | None,
        generation: NewGeneration | None = None,
        status: str = "failed",
    ) -> Message:
        """A failed or cancelled turn stays in the record with its reason, so the user sees what happened."""
        record = self.record_turn(
            conversation_id,
            reply=reply,
            plan=plan,
            status=status,
            generations=[generation] if generation is not None else (),
        )
        assert record.message is not None
        return record.message

    # ----- images: reading ------------------------------------------------------------

    def get_image(self, image_id: int) -> Image:
        _check_row_id(image_id, f"There is no image with id {image_id}.")
        with self.db.read() as session:
            image = session.get(Image, image_id)
            if image is None:
                raise NotFound(f"There is no image with id {image_id}.")
            return image

    def get_image_by_number(self, conversation_id: int, number: int) -> Image:
        _check_row_id(number, f"There is no image #{number} in this conversation.")
        _check_row_id(conversation_id, f"There is no conversation {conversation_id}.")
        with self.db.read() as session:
            image = session.scalar(
                select(Image).where(Image.conversation_id == conversation_id, Image.number == number)
            )
            if image is None:
                raise NotFound(f"There is no image #{number} in this conversation.")
            return image

    def conversation_images(self, conversation_id: int) -> list[Image]:
        if not is_row_id(conversation_id):
            return []
        with self.db.read() as session:
            query = select(Image).where(Image.conversation_id == conversation_id).order_by(Image.number)
            return list(session.scalars(query))

    def file_intact(self, image: Image) -> bool:
        """Whether the image's file is there and still hashes to what its row names."""
        try:
            return sha256_hex(self.image_bytes(image)) == image.sha256
        except OSError:
            return False

    def restore_file(self, image: Image, data: bytes) -> bool:
        """Put back a lost or damaged image file from bytes that hash to what its row names (a replay).

        Returns False, writing nothing, for bytes of any other hash.
        """
        if sha256_hex(data) != image.sha256:
            return False
        if not self.file_intact(image):  # a damaged file under the right name would block the put
            with contextlib.suppress(FileNotFoundError):
                self.image_path(image).unlink()
        self.files.put(data)
        self.files.settle_pending()  # its row already names it: nothing to wait for
        return True

    def image_path(self, image: Image) -> Path:
        return self.files.path_for(image.sha256)

    def image_bytes(self, image: Image) -> bytes:
        return self.files.read(image.sha256)

    def load_image(self, image: Image) -> PILImage.Image:
        return _open_stored(self.image_path(image), f"image #{image.number}")

    def load_mask(self, image: Image) -> PILImage.Image | None:
        if image.mask_sha256 is None:
            return None
        return _open_stored(self.files.path_for(image.mask_sha256), f"the mask of image #{image.number}")

    def generation(self, generation_id: int) -> tuple[Generation, list[GenerationInput]]:
        _check_row_id(generation_id, f"There is no generation {generation_id}.")
        with self.db.read() as session:
            generation = session.get(Generation, generation_id)
            if generation is None:
                raise NotFound(f"There is no generation {generation_id}.")
            inputs = list(
                session.scalars(select(GenerationInput).where(GenerationInput.generation_id == generation_id))
            )
            return generation, inputs

    def generations(self, conversation_id: int) -> list[Generation]:
        if not is_row_id(conversation_id):
            return []
        with self.db.read() as session:
            query = select(Generation).where(Generation.conversation_id == conversation_id)
            return list(session.scalars(query.order_by(Generation.id)))

    # ----- lineage (one recursive query each) -----------------------------------------

    def ancestors(self, image_id: int) -> list[Image]:
        """Root first, the image's parent last; the image itself is not included."""
        sql = text(
            """
            WITH RECURSIVE chain(id, parent_id, depth) AS (
                SELECT id, parent_id, 0 FROM images WHERE id = :image_id
                UNION ALL
                SELECT images.id, images.parent_id, chain.depth + 1
                FROM images JOIN chain ON images.id = chain.parent_id
                WHERE chain.depth < :max_depth
            )
            SELECT images.* FROM images JOIN chain ON images.id = chain.id
            ORDER BY chain.depth DESC
            """
        )
        return self._images_from_sql(sql, image_id)[:-1]  # the last row is the image itself

    def descendants(self, image_id: int) -> list[Image]:
        """Breadth-first (children, then grandchildren…), ordered by id within a generation."""
        sql = text(
            """
            WITH RECURSIVE below(id, depth) AS (
                SELECT id, 0 FROM images WHERE id = :image_id
                UNION ALL
                SELECT images.id, below.depth + 1
                FROM images JOIN below ON images.parent_id = below.id
                WHERE below.depth < :max_depth
            )
            SELECT images.* FROM images JOIN below ON images.id = below.id
            ORDER BY below.depth, images.id
            """
        )
        return self._images_from_sql(sql, image_id)[1:]  # the first row is the image itself

    def lineage_tree(self, image_id: int) -> list[LineageNode]:
        """The whole tree the image belongs to, from its root, with each node's depth."""
        sql = text(
            """
            WITH RECURSIVE
            up(id, parent_id, depth) AS (
                SELECT id, parent_id, 0 FROM images WHERE id = :image_id
                UNION ALL
                SELECT images.id, images.parent_id, up.depth + 1
                FROM images JOIN up ON images.id = up.parent_id
                WHERE up.depth < :max_depth
            ),
            root(id) AS (SELECT id FROM up WHERE parent_id IS NULL OR depth = :max_depth LIMIT 1),
            down(id, depth) AS (
                SELECT id, 0 FROM root
                UNION ALL
                SELECT images.id, down.depth + 1
                FROM images JOIN down ON images.parent_id = down.id
                WHERE down.depth < :max_depth
            )
            SELECT images.* FROM images JOIN down ON images.id = down.id
            ORDER BY down.depth, images.id
            """
        )
        images = self._images_from_sql(sql, image_id)
        depths: dict[int, int] = {}
        nodes: list[LineageNode] = []
        for image in images:  # parents come before children (ordered by depth)
            depth = depths.get(image.parent_id, -1) + 1 if image.parent_id is not None else 0
            depths[image.id] = depth
            nodes.append(LineageNode(image=image, depth=depth))
        return nodes

    def _images_from_sql(self, sql: Any, image_id: int) -> list[Image]:
        """Run one lineage CTE; each includes the image itself, so no rows means no such image.

        The existence check rides on the same statement: a separate `session.get` would make
        every lineage view two round trips.
        """
        _check_row_id(image_id, f"There is no image with id {image_id}.")
        with self.db.read() as session:
            statement = select(Image).from_statement(sql)
            params = {"image_id": image_id, "max_depth": MAX_LINEAGE_DEPTH}
            images = list(session.scalars(statement, params))
        if not images:
            raise NotFound(f"There is no image with id {image_id}.")
        return images

    # ----- gallery and search ----------------------------------------------------------

    def list_images(
        self, filters: ImageFilter | None = None, limit: int = 50, offset: int = 0
    ) -> list[Image]:
        """Newest first; `filters.query` uses full-text search over prompts and instructions."""
        query = self._filtered_images(filters or ImageFilter())
        if query is None:
            return []
        with self.db.read() as session:
            return list(session.scalars(query.order_by(Image.id.desc()).limit(limit).offset(offset)))

    def count_images(self, filters: ImageFilter | None = None) -> int:
        """How many images `list_images` would page through: "showing 50 of 312"."""
        query = self._filtered_images(filters or ImageFilter())
        if query is None:
            return 0
        with self.db.read() as session:
            return int(session.scalar(select(func.count()).select_from(query.subquery())) or 0)

    def _filtered_images(self, filters: ImageFilter) -> Select[tuple[Image]] | None:
        """The filters as a query; None when no row can match (an id no row can have)."""
        query: Select[tuple[Image]] = select(Image)
        if filters.query and filters.query.strip():
            query = self._text_search(query, filters.query)
        if filters.conversation_id is not None:
            if not is_row_id(filters.conversation_id):
                return None
            query = query.where(Image.conversation_id == filters.conversation_id)
        if filters.backend:
            query = query.where(Image.backend == filters.backend)
        if filters.operation:
            query = query.where(Image.operation == filters.operation)
        if filters.since is not None:
            query = query.where(Image.created_at >= filters.since)
        if filters.until is not None:
            query = query.where(Image.created_at < filters.until)
        return query

    def search_images(self, text_query: str, limit: int = 50) -> list[Image]:
        return self.list_images(ImageFilter(query=text_query), limit=limit)

    def _text_search(self, query: Select[tuple[Image]], text_query: str) -> Select[tuple[Image]]:
        """Words (all of them), `OR` between alternatives, `-word` to leave out, `#4` for image #4:
        the search syntax people know from web search engines."""
        search = parse_image_search(text_query)
        if search.numbers:
            query = query.where(Image.number.in_(search.numbers))
        if not search.groups and not search.excluded:
            return query if search.numbers else query.where(Image.id < 0)
        if search.groups:
            query = query.where(self._matching(search.groups))
        if search.excluded:
            query = query.where(not_(self._matching([[word] for word in search.excluded])))
        return query

    def _matching(self, groups: Sequence[Sequence[str]]) -> ColumnElement[bool]:
        """Images whose text has every term of at least one group (words match as prefixes).

        The full-text index splits text at emoji, so a symbol ("🦊") is found as a substring."""
        if self.db.is_sqlite:
            return or_(*(self._matching_group(group) for group in groups))
        return or_(
            *(
                and_(
                    *(
                        or_(
                            Image.prompt.ilike(f"%{word}%"),
                            Image.instruction.ilike(f"%{word}%"),
                            Image.revised_prompt.ilike(f"%{word}%"),
                        )
                        for word in group
                    )
                )
                for group in groups
            )
        )

    @staticmethod
    def _matching_group(group: Sequence[str]) -> ColumnElement[bool]:
        words = [term for term in group if re.fullmatch(r"\w+", term)]
        conditions: list[ColumnElement[bool]] = []
        if words:
            match = " ".join(f'"{word}"*' for word in words)
            # each subquery its own parameter: "fox -snow" has two, and one name would be one value
            rows = text("SELECT rowid FROM images_fts WHERE images_fts MATCH :match").bindparams(
                bindparam("match", match, unique=True)
            )
            conditions.append(Image.id.in_(rows))
        for symbol in (term for term in group if term not in words):
            # coalesced, so "-🦊" keeps an image with no instruction (NOT NULL would drop it)
            columns = (Image.prompt, Image.instruction, Image.revised_prompt)
            conditions.append(or_(*(func.coalesce(column, "").contains(symbol) for column in columns)))
        return and_(*conditions)

    def backends_and_operations(self) -> tuple[list[str], list[str]]:
        with self.db.read() as session:
            backends = list(session.scalars(select(Image.backend).distinct().order_by(Image.backend)))
            operations = list(session.scalars(select(Image.operation).distinct().order_by(Image.operation)))
            return backends, operations

    def counts(self) -> dict[str, int]:
        with self.db.read() as session:
            return {
                "conversations": session.scalar(select(func.count()).select_from(Conversation)) or 0,
                "messages": session.scalar(select(func.count()).select_from(Message)) or 0,
                "images": session.scalar(select(func.count()).select_from(Image)) or 0,
                "generations": session.scalar(select(func.count()).select_from(Generation)) or 0,
            }

    # ----- integrity -------------------------------------------------------------------

    def known_hashes(self) -> set[str]:
        with self.db.read() as session:
            images = set(session.scalars(select(Image.sha256)))
            masks = set(session.scalars(select(Image.mask_sha256).where(Image.mask_sha256.is_not(None))))
            return {h for h in images | masks if h}

    def sweep(self, *, grace_seconds: float = 3600.0) -> SweepReport:
        """Remove temp files and files no row names (what a crash between write and commit leaves).

        Looks without the lock (walking a big library takes a while), then deletes under the
        write lock after re-checking each candidate: Atelier writes files only inside a write
        transaction, so a file whose row was about to commit is named by the time we hold the
        lock, and even `grace_seconds=0` (`atelier doctor`) cannot delete a turn's new file.
        """
        temps, orphans = self.files.stale(self.known_hashes(), grace_seconds=grace_seconds)
        if not temps and not orphans:
            return SweepReport(temp_files_removed=0, orphan_files_removed=0)
        with self.db.write() as session:
            session.connection()  # BEGIN IMMEDIATE now, even when there is nothing to re-check
            still_used = self._referenced_hashes(session, orphans)
            return self.files.remove(temps, [digest for digest in orphans if digest not in still_used])

    def recover(self) -> RecoveryReport:
        """The start-up sweep: clear what a process that died mid-write left, and say so.

        Everything such a process can leave is in the store's `.tmp/`: temp files it never
        renamed, and pending markers naming files it renamed into the store but may not have
        committed (see `storage.files`). With nothing there, this is one listdir.

        Another live process may be mid-turn in the same data dir. On SQLite, Atelier writes
        files only inside a `BEGIN IMMEDIATE` transaction, so once this holds the write lock no
        live writer is between its first file and its commit: every temp file then is a dead
        writer's, and a marked file no row names is an orphan, whatever its age. That is why
        the decision is made under the lock and not by age, which would leave a crash's orphan
        for an hour and still guess. Other databases have no such global lock (writers lock one
        conversation), so there only leftovers older than an hour are touched; no turn spends
        that long between its file write and its commit.

        When something was found, every stored image's file is checked for presence (a stat
        per image, so only after a crash) and the kept files' hashes are verified; full hash
        checks of the whole library are `atelier doctor`'s job.
        """
        grace = 0.0 if self.db.is_sqlite else 3600.0
        if not self.files.leftovers(grace_seconds=grace):
            return RecoveryReport()
        with self.db.write() as session:
            session.connection()  # BEGIN IMMEDIATE: no live writer is mid-write from here on
            found = self.files.leftovers(grace_seconds=grace)  # again: a live writer's are gone
            committed: set[str] = set()
            for start in range(0, len(found.pending), 500):  # stay under SQLite's variable limit
                committed |= self._referenced_hashes(session, found.pending[start : start + 500])
            swept = self.files.remove(found.temp_files, [d for d in found.pending if d not in committed])
            for digest in committed:
                self.files.clear_marker(digest)
        kept_bad = [d for d in sorted(committed) if not _file_matches(self.files, d)]
        if not (swept.temp_files_removed or swept.orphan_files_removed or kept_bad):
            return RecoveryReport(committed_files_kept=len(committed))
        with self.db.read() as session:
            rows = session.execute(select(Image.id, Image.sha256, Image.mask_sha256)).all()
        missing = self._still_missing(rows)
        mismatched = sorted(
            {image_id for image_id, digest, mask in rows if digest in kept_bad or mask in kept_bad}
            - set(missing)
        )
        return RecoveryReport(
            temp_files_removed=swept.temp_files_removed,
            orphan_files_removed=swept.orphan_files_removed,
            committed_files_kept=len(committed),
            images_checked=len(rows),
            missing_files=missing,
            hash_mismatches=mismatched,
        )

    def check_integrity(self, *, database_errors: list[str] | None = None) -> IntegrityReport:
        """Rows ↔ files ↔ hashes, plus SQLite's own checks: what `atelier doctor` reports.

        Only looks; deletes nothing. `database_errors` passes on what `database_errors()` just
        found, so a big database is not checked twice. A database too damaged to list its
        images is reported as such, with no orphans claimed: a file no *readable* row names
        may still be the only copy of an image whose row is in a damaged page.
        """
        errors = self.database_errors() if database_errors is None else list(database_errors)
        pending = self.files.pending_hashes()
        temps = sorted(str(p) for p in self.files.temp_files())
        mismatched: list[int] = []
        try:
            with self.db.read() as session:
                rows = session.execute(select(Image.id, Image.sha256, Image.mask_sha256)).all()
            missing = self._still_missing(rows)
        except DBAPIError as exc:
            detail = error_detail(exc)
            return IntegrityReport(0, [], [], [], temps, pending, errors or [detail])
        missing_ids = set(missing)
        for image_id, digest, mask_digest in rows:
            if image_id in missing_ids:
                continue
            if any(h and not _file_matches(self.files, h) for h in (digest, mask_digest)):
                mismatched.append(image_id)
        known = {h for row in rows for h in row[1:] if h}
        orphans = [] if errors else sorted(set(self.files.all_hashes()) - known)
        return IntegrityReport(len(rows), missing, mismatched, orphans, temps, pending, errors)

    def _still_missing(self, rows: Sequence[Any]) -> list[int]:
        """Ids of rows whose file or mask is not on disk, re-checked against rows deleted meanwhile."""
        candidates = sorted(
            {
                image_id
                for image_id, digest, mask_digest in rows
                if any(h and not self.files.exists(h) for h in (digest, mask_digest))
            }
        )
        current: list[Any] = []
        with self.db.read() as session:  # a conversation deleted since the first read took its files
            for start in range(0, len(candidates), 500):  # stay under SQLite's variable limit
                chunk = candidates[start : start + 500]
                query = select(Image.id, Image.sha256, Image.mask_sha256).where(Image.id.in_(chunk))
                current.extend(session.execute(query).all())
        return sorted(
            image_id
            for image_id, digest, mask_digest in current
            if any(h and not self.files.exists(h) for h in (digest, mask_digest))
        )

    def database_errors(self) -> list[str]:
        """What SQLite's integrity and foreign-key checks report; empty when the database is sound.

        A file so damaged that the checks themselves fail ("database disk image is malformed")
        is reported with SQLite's words rather than raised: saying so is `atelier doctor`'s job.
        """
        if not self.db.is_sqlite:
            return []
        errors: list[str] = []
        try:
            with self.db.engine.connect() as connection:
                checked = [str(row[0]) for row in connection.execute(text("PRAGMA integrity_check"))]
                errors += [line for line in checked if line != "ok"]
                for table, rowid, parent, _fk in connection.execute(text("PRAGMA foreign_key_check")):
                    errors.append(f"{table} row {rowid} refers to a missing {parent} row")
        except DBAPIError as exc:
            errors.append(error_detail(exc))
        return errors

    # ----- helpers ---------------------------------------------------------------------

    def _lock_conversation(self, session: Session, conversation_id: int) -> None:
        _check_row_id(conversation_id, f"There is no conversation {conversation_id}.")
        query = select(Conversation.id).where(Conversation.id == conversation_id)
        if not self.db.is_sqlite:
            query = query.with_for_update()
        if session.scalar(query) is None:
            raise NotFound(f"There is no conversation {conversation_id}.")

    def _next_number(self, session: Session, conversation_id: int) -> int:
        current = session.scalar(
            select(func.max(Image.number)).where(Image.conversation_id == conversation_id)
        )
        return (current or 0) + 1

    def _touch_conversation(self, session: Session, conversation_id: int) -> None:
        result = session.execute(
            update(Conversation).where(Conversation.id == conversation_id).values(updated_at=utcnow())
        )
        if result.rowcount == 0:  # type: ignore[attr-defined]
            raise NotFound(f"There is no conversation {conversation_id}.")

    def _referenced_hashes(self, session: Session, hashes: Iterable[str]) -> set[str]:
        wanted = list(hashes)
        if not wanted:
            return set()
        # DISTINCT: a hash many rows share (imported copies, a reused mask) comes back once,
        # not once per row (100k rows to Python for a shared file otherwise).
        used = set(session.scalars(select(Image.sha256).where(Image.sha256.in_(wanted)).distinct()))
        used |= set(
            session.scalars(select(Image.mask_sha256).where(Image.mask_sha256.in_(wanted)).distinct())
        )
        return {h for h in used if h}


def is_row_id(number: int) -> bool:
    """Ids are signed 64-bit integers: a number outside names no row, and SQLite refuses to
    even bind it (OverflowError), so lookups answer "not found" without asking."""
    return ROW_ID_MIN <= number <= ROW_ID_MAX


def _check_row_id(number: int, not_found: str) -> None:
    if not is_row_id(number):
        raise NotFound(not_found)


def _in_dependency_order(items: Sequence[NewGeneration | NewImage]) -> list[NewGeneration | NewImage]:
    """Generations, then loose images, except that nothing comes before an image it refers to.

    A replayed chain can run generate → transform → edit in one turn: the edit's call takes the
    transform's image as input, so it is stored after it although calls usually come first.
    """

    def refs(item: NewGeneration | NewImage) -> list[NewImage]:
        if isinstance(item, NewImage):
            return [item.parent] if item.parent is not None else []
        found = [ref for ref, _role in item.inputs if isinstance(ref, NewImage)]
        return found + [image.parent for image in item.images if image.parent is not None]

    def made(item: NewGeneration | NewImage) -> list[NewImage]:
        return [item] if isinstance(item, NewImage) else list(item.images)

    ordered: list[NewGeneration | NewImage] = []
    done: set[int] = set()
    pending = list(items)
    while pending:
        index = next(
            (
                i
                for i, item in enumerate(pending)
                if all(id(ref) in done or any(ref is own for own in made(item)) for ref in refs(item))
            ),
            None,
        )
        if index is None:
            raise StorageError("The images of this turn refer to images that are not part of it.")
        ready = pending.pop(index)
        ordered.append(ready)
        done.update(id(image) for image in made(ready))
    return ordered


def _stored_id(ref: int | NewImage, stored: dict[int, Image]) -> int:
    return ref if isinstance(ref, int) else stored[id(ref)].id


def _open_stored(path: Path, what: str) -> PILImage.Image:
    """Pixels of a stored file, or a message that names the image instead of an errno and a path."""
    try:
        with PILImage.open(path) as opened:
            opened.load()
            return opened.copy()
    except FileNotFoundError:
        raise ImageFileDamaged(
            f"The file of {what} is missing from the data folder, so it can't be used; "
            "run `atelier doctor` to check the image store."
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or overwritten: Pillow's errors
        raise ImageFileDamaged(
            f"The file of {what} is damaged ({type(exc).__name__}), so it can't be used; "
            "run `atelier doctor` to check the image store."
        ) from None


def _file_matches(files: ImageFileStore, digest: str) -> bool:
    try:
        return sha256_hex(files.read(digest)) == digest
    except FileNotFoundError:
        return False


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


@dataclass(frozen=True)
class ImageSearch:
    """A gallery search: any group's words all present, none of `excluded`, one of `numbers`."""

    groups: list[list[str]]
    excluded: list[str]
    numbers: list[int]


def parse_image_search(user_text: str) -> ImageSearch:
    """ "fox OR wolf -snow #4" → groups [[fox], [wolf]], excluded [snow], numbers [4].

    Only words (runs of letters, digits, `_`) reach the full-text query, each quoted, so user
    text can never be FTS5 syntax (symbols such as emoji are matched as substrings); `OR`
    (upper case, as in search engines) splits alternatives.
    """
    groups: list[list[str]] = [[]]
    excluded: list[str] = []
    numbers: list[int] = []
    for token in user_text.split()[:32]:
        if token == "OR":
            groups.append([])
        elif re.fullmatch(r"#\d{1,9}", token):
            numbers.append(int(token[1:]))
        elif token.startswith("-") and (words := _search_terms(token)):
            excluded += words
        else:
            groups[-1] += _search_terms(token)
    return ImageSearch([group[:16] for group in groups if group], excluded[:16], numbers)


def _search_terms(token: str) -> list[str]:
    """The words of a token, and its symbols ("🦊", "❄️"): runs of non-ASCII characters that
    hold a symbol, which the full-text index does not see as words."""
    symbols = [
        run
        for run in re.findall(r"[^\w\s\x00-\x7f]+", token)
        if any(unicodedata.category(char).startswith("S") for char in run)
    ]
    return re.findall(r"\w+", token.lower()) + symbols


def search_words(text: str) -> list[str]:
    """The words of a conversation search, lower-cased, without repeats, in the order typed.

    Words are runs of letters, digits and `_`; everything else (`%`, quotes, dashes) only
    separates them. Past `MAX_SEARCH_WORDS` the rest is ignored: each word costs a subquery.
    """
    words: list[str] = []
    for word in re.findall(r"\w+", text.lower()):
        if word not in words:
            words.append(word)
    return words[:MAX_SEARCH_WORDS]


def _clean_title(title: str) -> str:
    cleaned = " ".join(title.split())
    return (cleaned[:120] or "New conversation").strip()
