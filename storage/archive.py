"""Export a conversation to a zip and import it back: the history belongs to the user.

The zip holds `atelier-export.json` (conversation, messages, generations, inputs, images,
lineage) and `images/<sha256>.png`. Import trusts nothing in the zip: entry names are checked
before anything is read, every file's bytes must hash to its name, lineage must stay inside
the export, and rows commit only after every file is in place. Ids are kept when they are
free (so a round trip into an empty data dir is exact) and renumbered otherwise.
"""

from __future__ import annotations

import json
import zipfile
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

from sqlalchemy import select

from storage.db import StorageError
from storage.files import sha256_hex
from storage.models import Conversation, Generation, GenerationInput, Image, Message
from storage.repository import Repository
from storage.serialize import row_as_dict

MANIFEST = "atelier-export.json"
FORMAT_VERSION = 1
MAX_ENTRY_BYTES = 200 * 1024 * 1024
MAX_ENTRIES = 100_000


class ArchiveError(StorageError):
    pass


def export_conversation(repo: Repository, conversation_id: int, out_path: Path) -> int:
    """Write the zip; returns the number of image files in it."""
    with repo.db.read() as session:
        conversation = session.get(Conversation, conversation_id)
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
    out_path.parent.mkdir(parents=True, exist_ok=True)
    temp_path = out_path.with_name(out_path.name + ".partial")
    with zipfile.ZipFile(temp_path, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr(MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))
        for digest in hashes:
            archive.write(repo.files.path_for(digest), f"images/{digest}.png")
    temp_path.replace(out_path)
    return len(hashes)


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


def import_conversation(repo: Repository, zip_path: Path) -> int:
    """Import an export; returns the new conversation id. Nothing is written on any error."""
    if not zip_path.is_file():
        raise ArchiveError(f"{zip_path} does not exist.")
    if not zipfile.is_zipfile(zip_path):
        raise ArchiveError(f"{zip_path} is not a zip file.")
    try:
        with zipfile.ZipFile(zip_path) as archive:
            entries = _check_entry_names(archive)
            manifest = _load_manifest(archive)
            files = _read_files(archive, entries, manifest)
    except zipfile.BadZipFile as exc:
        raise ArchiveError(f"{zip_path} is a damaged zip file ({exc}).") from None
    try:
        return _insert(repo, manifest, files)
    except (KeyError, TypeError, ValueError) as exc:
        raise ArchiveError(f"The export is malformed ({type(exc).__name__}: {exc}).") from None


def _read_files(
    archive: zipfile.ZipFile, entries: dict[str, zipfile.ZipInfo], manifest: dict[str, Any]
) -> dict[str, bytes]:
    needed = {h for image in manifest["images"] for h in (image.get("sha256"), image.get("mask_sha256")) if h}
    files: dict[str, bytes] = {}
    for digest in needed:
        name = f"images/{digest}.png"
        if name not in entries:
            raise ArchiveError(f"The export is missing the file for image {digest[:12]}….")
        data = archive.read(name)
        if sha256_hex(data) != digest:
            raise ArchiveError(f"The file {name} does not match its hash; the export is damaged.")
        files[digest] = data
    return files


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
            keep_ids = not _any_id_taken(session, manifest)
            # Files go in only now, under the write lock taken by the query above, as in
            # `record_turn`: a concurrent `sweep` can then never see them without their rows.
            for digest, data in files.items():
                if not repo.files.exists(digest):
                    repo.files.put(data)
                    created.append(digest)
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
