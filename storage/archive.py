"""Export a conversation to a zip and import it back: the history belongs to the user.

The zip holds `atelier-export.json` (conversation, messages, generations, inputs, images,
lineage) and `images/<sha256>.png`. Import trusts nothing in the zip: entry names are checked
before anything is read, every file's bytes must hash to its name, lineage must stay inside
the export, every file must be a whole PNG within Pillow's pixel limit, and rows commit only
after every file is in place. Ids are kept when they are free (so a round trip into an empty
data dir is exact) and renumbered otherwise; a renumbered image's PNG is re-encoded so its
`atelier` chunk names its new ids (the row records the new file's hash). A zip whose
conversation is here already (same title, messages and images) is not imported again.
"""

from __future__ import annotations

import contextlib
import io
import json
import struct
import tempfile
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

from PIL import Image as PILImage
from PIL import UnidentifiedImageError
from sqlalchemy import select

from storage.db import StorageError
from storage.files import sha256_hex
from storage.models import Conversation, Generation, GenerationInput, Image, Message
from storage.pngmeta import ATELIER_KEY, PARAMETERS_KEY, encode_png
from storage.repository import Repository, image_lineage_chunk, is_row_id
from storage.serialize import row_as_dict

MANIFEST = "atelier-export.json"
FORMAT_VERSION = 1
MAX_ENTRY_BYTES = 200 * 1024 * 1024
MAX_ENTRIES = 100_000


class ArchiveError(StorageError):
    pass


class AlreadyImported(ArchiveError):
    """The export's conversation is here already (imported before, or exported from here)."""

    def __init__(self, conversation_id: int) -> None:
        super().__init__(
            f"This export is already here as conversation {conversation_id} (same title, messages and "
            "images); nothing was imported."
        )
        self.conversation_id = conversation_id


def export_conversation(
    repo: Repository, conversation_id: int, out_path: Path, *, replace: bool = False
) -> int:
    """Write the zip; returns the number of image files in it.

    An existing file is replaced only with `replace`, and never one of Atelier's own files
    (the database, a stored image): an export aimed at the history it backs up would destroy it.
    """
    with repo.db.read() as session:
        conversation = session.get(Conversation, conversation_id) if is_row_id(conversation_id) else None
        if conversation is None:
            raise ArchiveError(f"There is no conversation {conversation_id}.")
        messages = session.scalars(select(Message).where(Message.conversation_id == conversation_id))
        generations = list(
            session.scalars(select(Generation).where(Generation.conversation_id == conversation_id))
        )
        images = list(session.scalars(select(Image).where(Image.conversation_id == conversation_id)))
        generation_ids = [g.id for g in generations]
        inputs = list(
            session.scalars(select(GenerationInput).where(GenerationInput.generation_id.in_(generation_ids)))
        )
        manifest = {
            "format": "atelier-export",
            "version": FORMAT_VERSION,
            "conversation": row_as_dict(conversation),
            "messages": [row_as_dict(m) for m in messages],
            "generations": [row_as_dict(g) for g in generations],
            "generation_inputs": [row_as_dict(i) for i in inputs],
            "images": [row_as_dict(i) for i in images],
        }
    hashes = sorted({h for image in images for h in (image.sha256, image.mask_sha256) if h})
    check_export_target(repo, out_path, replace=replace)
    # Every file is read and hashed before the zip exists: an export `import` would refuse
    # (a file whose bytes changed) is worse than none, since it looks like a backup.
    _check_files(repo, images, hashes)
    temp_path = out_path.with_name(out_path.name + ".partial")
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(temp_path, "w", compression=zipfile.ZIP_STORED) as archive:
            archive.writestr(MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))
            for digest in hashes:
                try:
                    data = repo.files.read(digest)
                except FileNotFoundError:  # removed since the check above
                    raise ArchiveError(_damaged_files_message(images, [digest], [])) from None
                if sha256_hex(data) != digest:  # changed since the check above
                    raise ArchiveError(_damaged_files_message(images, [], [digest]))
                archive.writestr(f"images/{digest}.png", data)
        temp_path.replace(out_path)
    except BaseException as exc:
        # a half-written zip is worse than none: it looks like an export and is not one
        with contextlib.suppress(OSError):
            temp_path.unlink()
        if isinstance(exc, OSError):
            reason = exc.strerror or str(exc)
            raise ArchiveError(f"Cannot write {out_path}: {reason}. Nothing was exported.") from None
        raise
    return len(hashes)


def export_conversation_bytes(repo: Repository, conversation_id: int) -> bytes:
    """The export zip in memory, for a browser download: the same checks and contents as
    `export_conversation` (it writes the zip in a scratch folder and reads it back)."""
    with tempfile.TemporaryDirectory(prefix="atelier-export-") as folder:
        path = Path(folder) / "conversation.zip"
        export_conversation(repo, conversation_id, path)
        return path.read_bytes()


def check_export_target(repo: Repository, out_path: Path, *, replace: bool = False) -> None:
    """Refuse, before anything is written, a target an export must not overwrite."""
    if out_path.is_dir():
        raise ArchiveError(f"OUT.zip must be a file path; {out_path} is a folder.")
    for folder in out_path.parents:
        if folder.exists():
            if not folder.is_dir():
                raise ArchiveError(f"Cannot write {out_path}: {folder} is a file, not a folder.")
            break
    target = out_path.resolve()
    if _is_inside(target, repo.files.root.resolve()):
        raise ArchiveError(
            f"{out_path} is inside Atelier's image store ({repo.files.root}); "
            "choose a path outside the data dir."
        )
    database = repo.db.sqlite_file
    if database is not None:
        database = database.resolve()
        own_files = {database} | {database.with_name(database.name + s) for s in ("-wal", "-shm", "-journal")}
        if target in own_files:
            raise ArchiveError(f"{out_path} is Atelier's database; choose a path outside the data dir.")
    if out_path.exists() or out_path.is_symlink():
        if not out_path.is_file():
            raise ArchiveError(f"{out_path} exists and is not a regular file; choose another path.")
        if not replace:
            raise ArchiveError(f"{out_path} already exists; pass --force to replace it.")


def _is_inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _check_files(repo: Repository, images: list[Image], hashes: list[str]) -> None:
    missing: list[str] = []
    damaged: list[str] = []
    for digest in hashes:
        try:
            data = repo.files.read(digest)
        except FileNotFoundError:
            missing.append(digest)
            continue
        if sha256_hex(data) != digest:
            damaged.append(digest)
    if missing or damaged:
        raise ArchiveError(_damaged_files_message(images, missing, damaged))


def _owners(images: list[Image], digests: list[str]) -> str:
    """ "image 3 (#3)", "images 3 (#3) and 5 (#5)": who a set of files belongs to."""
    owners = sorted(
        {i.id: i for i in images if {i.sha256, i.mask_sha256} & set(digests)}.values(), key=lambda i: i.id
    )
    names = [f"{i.id} (#{i.number})" for i in owners]
    if not names:  # a file only some row we no longer hold named
        names = [f"{digest[:12]}…" for digest in digests]
    noun = "image" if len(names) == 1 else "images"
    listed = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
    return f"{noun} {listed}"


def _damaged_files_message(images: list[Image], missing: list[str], damaged: list[str]) -> str:
    parts = []
    if missing:
        parts.append(f"the file of {_owners(images, missing)} is missing from the data dir")
    if damaged:
        parts.append(f"the file of {_owners(images, damaged)} no longer matches its sha256 (damaged on disk)")
    text = "; ".join(parts)
    return f"{text[0].upper()}{text[1:]}; run `atelier doctor`. Nothing was exported."


def _check_entry_names(archive: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    infos = archive.infolist()
    if len(infos) > MAX_ENTRIES:
        raise ArchiveError("The archive has too many entries to be an Atelier export.")
    by_name: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        name = info.filename
        path = PurePosixPath(name)
        if name.startswith(("/", "\\")) or ".." in path.parts or "\\" in name or ":" in name:
            raise ArchiveError(f"Refusing the archive: entry {name!r} points outside the archive.")
        if info.file_size > MAX_ENTRY_BYTES:
            raise ArchiveError(f"Refusing the archive: entry {name!r} is too large.")
        if info.is_dir():
            continue
        if name != MANIFEST and not (len(path.parts) == 2 and path.parts[0] == "images"):
            raise ArchiveError(f"Refusing the archive: unexpected entry {name!r}.")
        by_name[name] = info
    if MANIFEST not in by_name:
        raise ArchiveError(f"This zip is not an Atelier export (no {MANIFEST}).")
    return by_name


def _parse_datetime(value: Any) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ArchiveError("The export has a malformed timestamp.")
    return datetime.fromisoformat(value)


def _load_manifest(archive: zipfile.ZipFile) -> dict[str, Any]:
    try:
        manifest = json.loads(archive.read(MANIFEST))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ArchiveError(f"The export's {MANIFEST} is not valid JSON.") from None
    if not isinstance(manifest, dict) or manifest.get("format") != "atelier-export":
        raise ArchiveError("This zip is not an Atelier export.")
    if manifest.get("version") != FORMAT_VERSION:
        raise ArchiveError(f"Unsupported export version {manifest.get('version')!r}.")
    for key in ("messages", "generations", "generation_inputs", "images"):
        if not isinstance(manifest.get(key), list):
            raise ArchiveError(f"The export is malformed: '{key}' missing.")
    if not isinstance(manifest.get("conversation"), dict):
        raise ArchiveError("The export is malformed: 'conversation' missing.")
    return manifest


@dataclass(frozen=True)
class LoadedArchive:
    """An export read and checked in full, before anything is written anywhere."""

    manifest: dict[str, Any]
    files: dict[str, bytes]


def import_conversation(repo: Repository, zip_path: Path) -> int:
    """Import an export; returns the new conversation id. Nothing is written on any error."""
    return import_archive(repo, read_archive(zip_path))


def read_archive(zip_path: Path) -> LoadedArchive:
    """Read and check a zip (names, manifest, every file's hash and pixels); writes nothing.

    Split from `import_archive` so the CLI can refuse a bad zip before it opens (and so
    creates) a data dir.
    """
    if zip_path.is_dir():
        raise ArchiveError(f"{zip_path} is a folder, not a zip file; give the path of an export zip.")
    if not zip_path.is_file():
        raise ArchiveError(f"{zip_path} does not exist.")
    if not zipfile.is_zipfile(zip_path):
        raise ArchiveError(
            f"{zip_path} is not a complete zip file: cut short (an interrupted copy?) or no zip at all."
        )
    try:
        with zipfile.ZipFile(zip_path) as archive:
            entries = _check_entry_names(archive)
            manifest = _load_manifest(archive)
            files = _read_files(archive, entries, manifest)
    except zipfile.BadZipFile as exc:
        raise ArchiveError(f"{zip_path} is a damaged zip file ({exc}).") from None
    return LoadedArchive(manifest, files)


def import_archive(repo: Repository, archive: LoadedArchive) -> int:
    """Store a checked archive; returns the new conversation id. Nothing is written on any error."""
    try:
        return _insert(repo, archive.manifest, dict(archive.files))
    except (KeyError, TypeError, ValueError) as exc:
        raise ArchiveError(f"The export is malformed ({type(exc).__name__}: {exc}).") from None


def _read_files(
    archive: zipfile.ZipFile, entries: dict[str, zipfile.ZipInfo], manifest: dict[str, Any]
) -> dict[str, bytes]:
    needed = {h for image in manifest["images"] for h in (image.get("sha256"), image.get("mask_sha256")) if h}
    files: dict[str, bytes] = {}
    for digest in sorted(needed):
        name = f"images/{digest}.png"
        if name not in entries:
            raise ArchiveError(f"The export is missing the file for image {digest[:12]}….")
        data = archive.read(name)
        if sha256_hex(data) != digest:
            raise ArchiveError(f"The file {name} does not match its hash; the export is damaged.")
        _check_png(name, data)
        files[digest] = data
    return files


def _check_png(name: str, data: bytes) -> None:
    """A real, whole PNG within Pillow's pixel limit (`MAX_IMAGE_PIXELS`), or ArchiveError.

    The hash only proves the file is what the manifest names, not that it is an image: an
    export may be hand-made. The size is checked on the declared dimensions before decoding;
    Pillow's decompression-bomb warning is raised as an error, as for uploads.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", PILImage.DecompressionBombWarning)
        try:
            # Image.open checks the declared size against MAX_IMAGE_PIXELS before decoding
            with PILImage.open(io.BytesIO(data), formats=["PNG"]) as image:
                image.load()
        except (PILImage.DecompressionBombError, PILImage.DecompressionBombWarning):
            limit = PILImage.MAX_IMAGE_PIXELS
            raise ArchiveError(
                f"Refusing the archive: {name} is over the {limit or 0:,}-pixel limit."
            ) from None
        except UnidentifiedImageError:
            raise ArchiveError(f"Refusing the archive: {name} is not a PNG image.") from None
        except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error):
            raise ArchiveError(f"Refusing the archive: {name} is a damaged PNG.") from None


def _insert(repo: Repository, manifest: dict[str, Any], files: dict[str, bytes]) -> int:
    images = manifest["images"]
    image_ids = {image["id"] for image in images}
    for image in images:
        if image.get("parent_id") is not None and image["parent_id"] not in image_ids:
            image["parent_id"] = None  # its parent lives in another conversation, not exported
    _check_acyclic(images)

    created: list[str] = []
    try:
        with repo.db.write() as session:
            existing = _same_conversation_here(session, manifest)
            if existing is not None:  # a second import would be a second copy of every image
                raise AlreadyImported(existing)
            keep_ids = not _any_id_taken(session, manifest)
            conversation = manifest["conversation"]
            new_conversation = Conversation(
                id=conversation["id"] if keep_ids else None,
                title=str(conversation["title"]),
                created_at=_parse_datetime(conversation["created_at"]),
                updated_at=_parse_datetime(conversation["updated_at"]),
            )
            session.add(new_conversation)
            session.flush()
            cid = new_conversation.id
            message_ids: dict[int, int] = {}
            for row in manifest["messages"]:
                message = Message(
                    id=row["id"] if keep_ids else None,
                    conversation_id=cid,
                    role=str(row["role"]),
                    content=str(row["content"]),
                    plan=row.get("plan"),
                    status=str(row.get("status", "ok")),
                    created_at=_parse_datetime(row["created_at"]),
                )
                session.add(message)
                session.flush()
                message_ids[row["id"]] = message.id
            generation_ids: dict[int, int] = {}
            for row in manifest["generations"]:
                generation = Generation(
                    **{k: v for k, v in row.items() if k not in ("id", "conversation_id", "message_id")},
                    id=row["id"] if keep_ids else None,
                    conversation_id=cid,
                    message_id=message_ids.get(row.get("message_id")),
                )
                generation.created_at = _parse_datetime(row["created_at"])  # type: ignore[assignment]
                session.add(generation)
                session.flush()
                generation_ids[row["id"]] = generation.id
            new_image_ids: dict[int, int] = {}
            for row in sorted(images, key=lambda r: r["number"]):
                values = {
                    k: v
                    for k, v in row.items()
                    if k not in ("id", "conversation_id", "message_id", "generation_id", "parent_id")
                }
                image = Image(
                    **values,
                    id=row["id"] if keep_ids else None,
                    conversation_id=cid,
                    message_id=message_ids.get(row.get("message_id")),
                    generation_id=generation_ids.get(row.get("generation_id")),
                    parent_id=None,
                )
                image.created_at = _parse_datetime(row["created_at"])  # type: ignore[assignment]
                session.add(image)
                session.flush()
                new_image_ids[row["id"]] = image.id
            for row in images:
                if row.get("parent_id") is not None:
                    image = session.get(Image, new_image_ids[row["id"]])
                    assert image is not None
                    image.parent_id = new_image_ids[row["parent_id"]]
            stored: list[Image] = []
            for new_id in new_image_ids.values():
                image = session.get(Image, new_id)
                assert image is not None
                image.params = _renumbered(image.params, new_image_ids)
                _match_lineage_chunk(image, files)
                stored.append(image)
            for generation_id in generation_ids.values():
                call = session.get(Generation, generation_id)
                assert call is not None
                call.params = _renumbered(call.params, new_image_ids) or {}
            # Files go in only now, under the write lock the first query took, as in
            # `record_turn`: a concurrent `sweep` can then never see them without their rows.
            for digest in sorted({h for i in stored for h in (i.sha256, i.mask_sha256) if h}):
                if not repo.files.exists(digest):
                    repo.files.put(files[digest])
                    created.append(digest)
            session.flush()
            for row in manifest["generation_inputs"]:
                if row["generation_id"] in generation_ids and row["image_id"] in new_image_ids:
                    session.add(
                        GenerationInput(
                            generation_id=generation_ids[row["generation_id"]],
                            image_id=new_image_ids[row["image_id"]],
                            role=str(row["role"]),
                        )
                    )
        return cid
    except BaseException:
        for digest in created:
            repo.files.delete(digest)
        raise


#: params that name another image by id ("a re-roll of #N", "a replay of …")
IMAGE_ID_PARAMS = ("replay_of", "regenerated_from", "source_id")


def _renumbered(params: dict[str, Any] | None, new_ids: dict[int, int]) -> dict[str, Any] | None:
    """Params with the image ids they name moved to the imported rows' ids.

    An id of an image outside the export (another conversation) is dropped: in this data dir
    it would name an unrelated image.
    """
    if not params or not any(key in params for key in IMAGE_ID_PARAMS):
        return params
    out = dict(params)
    for key in IMAGE_ID_PARAMS:
        if key in out:
            old = out.pop(key)
            if isinstance(old, int) and old in new_ids:
                out[key] = new_ids[old]
    return out


def _match_lineage_chunk(image: Image, files: dict[str, bytes]) -> None:
    """Make the PNG's `atelier` chunk name this row's own ids, re-encoding it when it does not.

    Imported with new ids (the originals are taken), or with a parent left behind in another
    conversation, the file would otherwise claim to be the original image: other tools and a
    later import would read the wrong lineage. The pixels and `parameters` text are kept; the
    new bytes get their own hash, which the row records.
    """
    data = files[image.sha256]
    expected = image_lineage_chunk(image)
    with PILImage.open(io.BytesIO(data)) as opened:
        chunks = dict(getattr(opened, "text", {}) or {})
        try:
            current = json.loads(chunks.get(ATELIER_KEY) or "null")
        except json.JSONDecodeError:
            current = None
        if current == expected:
            return
        opened.load()
        pixels = opened.copy()
    reencoded = encode_png(pixels, chunks.get(PARAMETERS_KEY), expected)
    digest = sha256_hex(reencoded)
    files[digest] = reencoded
    image.sha256 = digest


def _check_acyclic(images: list[dict[str, Any]]) -> None:
    parents = {image["id"]: image.get("parent_id") for image in images}
    for start in parents:
        seen: set[Any] = set()
        node: Any = start
        while node is not None:
            if node in seen:
                raise ArchiveError("The export's lineage has a cycle; it was not made by Atelier.")
            seen.add(node)
            node = parents.get(node)


def _same_conversation_here(session: Any, manifest: dict[str, Any]) -> int | None:
    """The id of a stored conversation the export is a copy of, compared by what it holds
    (ids and file hashes change when an import renumbers, so they cannot tell)."""

    def messages(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return [(m["role"], m["content"], m["created_at"]) for m in sorted(rows, key=lambda m: m["id"])]

    def images(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return sorted((i["number"], i["operation"], i["prompt"], i["seed"], i["created_at"]) for i in rows)

    conversation = manifest["conversation"]
    candidates = session.scalars(select(Conversation).where(Conversation.title == str(conversation["title"])))
    for candidate in candidates:
        if row_as_dict(candidate)["created_at"] != conversation["created_at"]:
            continue
        here_messages = session.scalars(select(Message).where(Message.conversation_id == candidate.id))
        here_images = session.scalars(select(Image).where(Image.conversation_id == candidate.id))
        if messages([row_as_dict(m) for m in here_messages]) == messages(manifest["messages"]) and images(
            [row_as_dict(i) for i in here_images]
        ) == images(manifest["images"]):
            return int(candidate.id)
    return None


def _any_id_taken(session: Any, manifest: dict[str, Any]) -> bool:
    checks: list[tuple[Any, list[Any]]] = [
        (Conversation, [manifest["conversation"]["id"]]),
        (Message, [m["id"] for m in manifest["messages"]]),
        (Generation, [g["id"] for g in manifest["generations"]]),
        (Image, [i["id"] for i in manifest["images"]]),
    ]
    for model, ids in checks:
        if ids and session.scalar(select(model.id).where(model.id.in_(ids)).limit(1)) is not None:
            return True
    return False
