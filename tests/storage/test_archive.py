"""Export/import: a conversation leaves as a zip and comes back whole, on this or another machine."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import pytest
from PIL import Image as PILImage

from storage.archive import (
    MANIFEST,
    AlreadyImported,
    ArchiveError,
    export_conversation,
    import_conversation,
)
from storage.files import sha256_hex
from storage.pngmeta import read_png_metadata
from storage.repository import NewGeneration, NewImage, Repository
from tests.storage.helpers import add_generated, files_on_disk, row_count, table_rows, tiny_image

TABLES = {
    "conversations": "id",
    "messages": "id",
    "generations": "id",
    "generation_inputs": "generation_id, image_id, role",
    "images": "id",
}
JSON_COLUMNS = {"plan", "params", "usage"}


def _normalised(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """JSON columns compared by value (the export sorts keys); every other column as stored."""
    return [
        {k: (json.loads(v) if k in JSON_COLUMNS and isinstance(v, str) else v) for k, v in row.items()}
        for row in rows
    ]


def _dump(repo: Repository) -> dict[str, list[dict[str, Any]]]:
    return {table: _normalised(table_rows(repo, table, order)) for table, order in TABLES.items()}


def build_rich_conversation(repo: Repository) -> int:
    """Every kind of row an export must carry: plans, n=2, edit, inpaint with mask, failure, upload."""
    conversation = repo.create_conversation("Harbour, at night: a series")
    cid = conversation.id
    user = repo.add_message(cid, "user", "Two harbours at night, please")
    first = repo.record_turn(
        cid,
        reply="Here are two harbours.",
        plan={"intent": "generate", "targets": [], "prompt": "harbour at night", "n": 2},
        generations=[
            NewGeneration(
                operation="generate",
                backend="openai",
                model="gpt-image-1",
                prompt="a harbour at night, lanterns",
                negative_prompt="blurry",
                params={"quality": "high", "size": "8x8", "n": 2},
                duration_ms=1234,
                usage={"input_tokens": 12, "output_tokens": 4096},
                cost_usd=0.0425,
                images=[
                    NewImage(
                        image=tiny_image(i),
                        operation="generate",
                        backend="openai",
                        model="gpt-image-1",
                        prompt="a harbour at night, lanterns",
                        negative_prompt="blurry",
                        revised_prompt=f"A quiet harbour at night, variant {i}",
                        instruction="Two harbours at night, please",
                        seed=None,
                        params={"quality": "high"},
                    )
                    for i in (1, 2)
                ],
            )
        ],
    ).images
    repo.add_message(cid, "user", "make #2 foggy")
    edited = repo.record_turn(
        cid,
        reply="Foggier.",
        plan={"intent": "edit", "targets": [2]},
        generations=[
            NewGeneration(
                operation="edit",
                backend="diffusers",
                model="sd15",
                prompt="a harbour at night, thick fog",
                params={"steps": 20, "guidance": 6.5, "strength": 0.6, "sampler": "Euler a"},
                inputs=[(first[1].id, "init"), (first[0].id, "reference")],
                images=[
                    NewImage(
                        image=tiny_image(3),
                        operation="edit",
                        backend="diffusers",
                        model="sd15",
                        prompt="a harbour at night, thick fog",
                        instruction="make #2 foggy",
                        seed=1234567,
                        params={"steps": 20, "guidance": 6.5, "strength": 0.6, "sampler": "Euler a"},
                        parent_id=first[1].id,
                    )
                ],
            )
        ],
    ).images[0]
    repo.record_turn(
        cid,
        reply="Boat added.",
        generations=[
            NewGeneration(
                operation="inpaint",
                backend="diffusers",
                model="sd15-inpaint",
                prompt="a small boat",
                inputs=[(edited.id, "init"), (edited.id, "mask")],
                images=[
                    NewImage(
                        image=tiny_image(4),
                        operation="inpaint",
                        backend="diffusers",
                        model="sd15-inpaint",
                        prompt="a small boat",
                        instruction="add a boat bottom left",
                        seed=5,
                        parent_id=edited.id,
                        mask=PILImage.new("L", (8, 8), 255),
                    )
                ],
            )
        ],
    )
    repo.record_failure(
        cid,
        reply="The image service refused that request.",
        plan={"intent": "generate", "errors": ["content_policy"]},
        generation=NewGeneration(
            operation="generate", backend="openai", model="gpt-image-1", status="failed", error="policy"
        ),
    )
    upload_message = repo.add_message(cid, "user", "here is my photo")
    repo.save_upload(cid, upload_message.id, tiny_image(5), "here is my photo")
    repo.record_turn(
        cid,
        images=[
            NewImage(
                image=tiny_image(6),
                operation="transform",
                backend="builtin",
                model="",
                instruction="flip it",
                parent_id=edited.id,
                params={"transform": "flip_horizontal"},
            )
        ],
        images_message_id=user.id,
    )
    return cid


@pytest.fixture
def exported(repo: Repository, tmp_path: Path) -> tuple[int, Path]:
    cid = build_rich_conversation(repo)
    out = tmp_path / "exports" / "harbour.zip"
    assert export_conversation(repo, cid, out) == 7  # 6 images + 1 mask
    return cid, out


def _empty_repo(root: Path) -> Repository:
    return Repository.open(f"sqlite:///{root / 'atelier.db'}", root / "images")


def test_round_trip_into_empty_data_dir_is_exact(
    repo: Repository, exported: tuple[int, Path], tmp_path: Path
) -> None:
    cid, zip_path = exported
    target = _empty_repo(tmp_path / "elsewhere")
    assert import_conversation(target, zip_path) == cid
    assert _dump(target) == _dump(repo)
    assert files_on_disk(target.files.root) == files_on_disk(repo.files.root)
    assert target.check_integrity().ok
    target.db.dispose()


def test_second_import_renumbers_and_keeps_lineage(
    repo: Repository, exported: tuple[int, Path], tmp_path: Path
) -> None:
    cid, zip_path = exported
    target = _empty_repo(tmp_path / "elsewhere")
    assert import_conversation(target, zip_path) == cid
    # renamed, the first copy is the user's own version: the export goes in again beside it
    target.rename_conversation(cid, "my edited copy")
    files_after_first = files_on_disk(target.files.root)
    copy_id = import_conversation(target, zip_path)
    assert copy_id != cid

    original, copy = target.conversation_images(cid), target.conversation_images(copy_id)
    assert {i.id for i in original}.isdisjoint({i.id for i in copy})
    assert [i.number for i in copy] == [i.number for i in original] == [1, 2, 3, 4, 5, 6]

    def parent_numbers(images: list[Any]) -> list[int | None]:
        by_id = {i.id: i.number for i in images}
        return [by_id[i.parent_id] if i.parent_id else None for i in images]

    assert parent_numbers(copy) == parent_numbers(original) == [None, None, 2, 3, None, 3]
    # the copy's files name the copy: same pixels and parameters, its own ids, so its own hashes
    assert {i.sha256 for i in copy}.isdisjoint({i.sha256 for i in original})
    for before, after in zip(original, copy, strict=True):
        old_bytes, new_bytes = target.image_bytes(before), target.image_bytes(after)
        assert (
            PILImage.open(io.BytesIO(new_bytes)).tobytes() == PILImage.open(io.BytesIO(old_bytes)).tobytes()
        )
        assert read_png_metadata(new_bytes).infotext == read_png_metadata(old_bytes).infotext
        assert sha256_hex(new_bytes) == after.sha256
    assert [i.mask_sha256 for i in copy] == [i.mask_sha256 for i in original]  # no ids in a mask
    tree = target.lineage_tree(copy[3].id)
    assert [(n.image.number, n.depth) for n in tree] == [(2, 0), (3, 1), (4, 2), (6, 2)]
    assert all(n.image.conversation_id == copy_id for n in tree)

    # generation inputs point at the copy's own images, roles kept
    edit = next(i for i in copy if i.operation == "edit")
    _, inputs = target.generation(edit.generation_id or -1)
    by_id = {i.id: i.number for i in copy}
    assert sorted((by_id[i.image_id], i.role) for i in inputs) == [(1, "reference"), (2, "init")]
    assert [m.content for m in target.messages(copy_id)] == [m.content for m in target.messages(cid)]
    # the first copy's files are untouched; the second adds its six images, sharing the mask
    files_now = files_on_disk(target.files.root)
    assert {k: v for k, v in files_now.items() if k in files_after_first} == files_after_first
    assert len(files_now) == len(files_after_first) + 6
    assert target.check_integrity().ok
    target.db.dispose()


def test_the_same_export_imported_twice_is_not_copied_again(
    repo: Repository, exported: tuple[int, Path], tmp_path: Path
) -> None:
    cid, zip_path = exported
    target = _empty_repo(tmp_path / "elsewhere")
    assert import_conversation(target, zip_path) == cid
    files_before, counts_before = files_on_disk(target.files.root), target.counts()
    with pytest.raises(AlreadyImported, match=f"already here as conversation {cid}"):
        import_conversation(target, zip_path)
    assert files_on_disk(target.files.root) == files_before and target.counts() == counts_before
    # back into the data dir it came from: the same conversation, so the same answer
    with pytest.raises(AlreadyImported, match=f"conversation {cid}"):
        import_conversation(repo, zip_path)
    target.db.dispose()


def _own_chunk(repo: Repository, image: Any) -> dict[str, Any]:
    lineage = read_png_metadata(repo.image_bytes(image)).lineage
    assert lineage is not None
    return lineage


def test_every_imported_file_names_its_own_row(
    repo: Repository, exported: tuple[int, Path], tmp_path: Path
) -> None:
    """After importing the same zip twice, each PNG's `atelier` chunk names that row, not the original."""
    _, zip_path = exported
    target = _empty_repo(tmp_path / "elsewhere")
    first = import_conversation(target, zip_path)
    target.rename_conversation(first, "renamed, so the zip goes in again beside it")
    conversations = [first, import_conversation(target, zip_path)]
    for cid in conversations:
        for image in target.conversation_images(cid):
            chunk = _own_chunk(target, image)
            assert (chunk["id"], chunk["parent_id"], chunk["conversation_id"], chunk["number"]) == (
                image.id,
                image.parent_id,
                cid,
                image.number,
            )
    # and a copy of the copy still does: the re-encoded files export and import cleanly
    again = tmp_path / "again.zip"
    export_conversation(target, conversations[1], again)
    target.rename_conversation(conversations[1], "the second copy, renamed")
    third = import_conversation(target, again)
    assert all(_own_chunk(target, i)["id"] == i.id for i in target.conversation_images(third))
    assert target.check_integrity().ok
    target.db.dispose()


def test_a_parent_left_in_another_conversation_is_dropped_from_the_file_too(
    repo: Repository, tmp_path: Path
) -> None:
    source = repo.create_conversation("source")
    parent = add_generated(repo, source.id, "a lighthouse", index=1)
    remix = repo.create_conversation("remix")
    child = add_generated(repo, remix.id, "the lighthouse at dusk", parent_id=parent.id, index=2)
    assert _own_chunk(repo, child)["parent_id"] == parent.id
    zip_path = tmp_path / "remix.zip"
    export_conversation(repo, remix.id, zip_path)

    target = _empty_repo(tmp_path / "elsewhere")
    cid = import_conversation(target, zip_path)
    (imported,) = target.conversation_images(cid)
    assert imported.id == child.id and imported.parent_id is None  # ids kept; the parent did not come
    assert _own_chunk(target, imported)["parent_id"] is None
    assert target.check_integrity().ok
    target.db.dispose()


def _rewrite_zip(source: Path, target: Path, edit: Any) -> None:
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for info in old.infolist():
            name, data = edit(info.filename, old.read(info.filename))
            new.writestr(name, data)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("traversal", "outside the archive"),
        ("tampered", "does not match its hash"),
        ("cycle", "cycle"),
        ("not-json", "not valid JSON"),
        ("missing-file", "missing the file"),
    ],
)
def test_bad_archives_are_refused_and_write_nothing(
    repo: Repository, exported: tuple[int, Path], tmp_path: Path, case: str, message: str
) -> None:
    _, zip_path = exported
    bad = tmp_path / f"{case}.zip"
    first_image = True

    def edit(name: str, data: bytes) -> tuple[str, bytes]:
        nonlocal first_image
        if case == "traversal" and name.startswith("images/") and first_image:
            first_image = False
            return "../../evil.png", data
        if case == "tampered" and name.startswith("images/"):
            return name, data + b"x"
        if case == "missing-file" and name.startswith("images/") and first_image:
            first_image = False
            return "images/" + "0" * 64 + ".png", data
        if name == MANIFEST and case == "cycle":
            manifest = json.loads(data)
            ids = [image["id"] for image in manifest["images"]]
            manifest["images"][0]["parent_id"] = ids[2]  # #1 ← #3 ← #2 … ← #1
            manifest["images"][2]["parent_id"] = ids[1]
            manifest["images"][1]["parent_id"] = ids[0]
            return name, json.dumps(manifest).encode()
        if name == MANIFEST and case == "not-json":
            return name, b"{not json"
        return name, data

    _rewrite_zip(zip_path, bad, edit)
    target = _empty_repo(tmp_path / "target")
    with pytest.raises(ArchiveError, match=message):
        import_conversation(target, bad)
    assert row_count(target, "conversations") == 0 and row_count(target, "images") == 0
    assert files_on_disk(target.files.root) == {}
    assert not (tmp_path / "evil.png").exists()
    target.db.dispose()


def test_non_zip_and_missing_file_are_refused(repo: Repository, tmp_path: Path) -> None:
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ArchiveError, match=r"not a complete zip|damaged"):
        import_conversation(repo, junk)
    with pytest.raises(ArchiveError, match="does not exist"):
        import_conversation(repo, tmp_path / "nope.zip")
    assert row_count(repo, "conversations") == 0


def test_export_of_unknown_conversation_writes_no_file(repo: Repository, tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match="no conversation 42"):
        export_conversation(repo, 42, tmp_path / "x.zip")
    assert not (tmp_path / "x.zip").exists()


def _png(size: tuple[int, int] = (8, 8)) -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", size, "teal").save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", (8, 8), "teal").save(buffer, format="JPEG")
    return buffer.getvalue()


def _swap_first_image(source: Path, target: Path, replacement: bytes) -> None:
    """The first image's file replaced by `replacement`, manifest and entry name rehashed to match."""
    with zipfile.ZipFile(source) as old:
        manifest = json.loads(old.read(MANIFEST))
        old_digest = manifest["images"][0]["sha256"]
        new_digest = sha256_hex(replacement)
        manifest["images"][0]["sha256"] = new_digest
        with zipfile.ZipFile(target, "w") as new:
            for info in old.infolist():
                if info.filename == MANIFEST:
                    new.writestr(MANIFEST, json.dumps(manifest))
                elif info.filename == f"images/{old_digest}.png":
                    new.writestr(f"images/{new_digest}.png", replacement)
                else:
                    new.writestr(info.filename, old.read(info.filename))


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("jpeg", "is not a PNG image"),
        ("text", "is not a PNG image"),
        ("truncated", "is a damaged PNG"),
        ("over-the-pixel-limit", "over the 32-pixel limit"),
    ],
)
def test_files_that_are_not_sound_pngs_are_refused_before_anything_is_written(
    repo: Repository,
    exported: tuple[int, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    case: str,
    message: str,
) -> None:
    _, zip_path = exported
    replacement = {
        "jpeg": _jpeg(),
        "text": b"just some text, hashed correctly",
        "truncated": _png()[:-30],
        "over-the-pixel-limit": _png((8, 8)),  # 64 pixels
    }[case]
    if case == "over-the-pixel-limit":
        monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 32)
    bad = tmp_path / f"{case}.zip"
    _swap_first_image(zip_path, bad, replacement)
    target = _empty_repo(tmp_path / "target")
    with pytest.raises(ArchiveError, match=message):
        import_conversation(target, bad)
    assert row_count(target, "conversations") == 0 and row_count(target, "images") == 0
    assert files_on_disk(target.files.root) == {}
    target.db.dispose()


def test_a_png_exactly_at_the_pixel_limit_is_accepted(
    repo: Repository, exported: tuple[int, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pillow's rule: more than MAX_IMAGE_PIXELS is refused; exactly that many is fine."""
    _, zip_path = exported
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 64)  # the export's images are 8x8
    target = _empty_repo(tmp_path / "target")
    cid = import_conversation(target, zip_path)
    assert len(target.conversation_images(cid)) == 6
    target.db.dispose()


def test_export_with_a_missing_file_leaves_no_zip_and_no_partial(repo: Repository, tmp_path: Path) -> None:
    conversation = repo.create_conversation("gone")
    first = add_generated(repo, conversation.id, "a lighthouse", index=1)
    second = add_generated(repo, conversation.id, "a boat", index=2)
    repo.image_path(second).unlink()
    out = tmp_path / "exports" / "gone.zip"
    with pytest.raises(ArchiveError, match=f"image {second.id} .#2. is missing"):
        export_conversation(repo, conversation.id, out)
    assert not (tmp_path / "exports").exists()  # not even the folder
    assert repo.image_path(first).exists()


def test_a_failure_while_writing_the_zip_removes_the_partial_file(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conversation = repo.create_conversation("disk full")
    for index in range(3):
        add_generated(repo, conversation.id, f"image {index}", index=index)
    out = tmp_path / "out.zip"
    out.write_bytes(b"an older export the user keeps")
    real_write = zipfile.ZipFile.writestr  # export writes the bytes it has just verified
    calls = 0

    def failing_write(self: zipfile.ZipFile, *args: Any, **kwargs: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:  # the manifest and one image are in; the disk fills up on the next
            raise OSError(28, "No space left on device")
        real_write(self, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "writestr", failing_write)
    with pytest.raises(ArchiveError, match=r"Cannot write .*out\.zip: No space left on device") as failure:
        export_conversation(repo, conversation.id, out, replace=True)
    assert ".partial" not in str(failure.value)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("out")) == ["out.zip"]
    assert out.read_bytes() == b"an older export the user keeps"


def test_export_refuses_a_file_whose_bytes_no_longer_match_its_hash(repo: Repository, tmp_path: Path) -> None:
    """Such a zip looks like a backup, and `import` refuses it: better no export at all."""
    conversation = repo.create_conversation("bit rot")
    first = add_generated(repo, conversation.id, "a lighthouse", index=1)
    second = add_generated(repo, conversation.id, "a boat", index=2)
    damaged = repo.image_path(second)
    damaged.write_bytes(damaged.read_bytes() + b"appended by something else")
    kept = files_on_disk(tmp_path / "images")
    out = tmp_path / "exports" / "rot.zip"
    with pytest.raises(ArchiveError) as refused:
        export_conversation(repo, conversation.id, out)
    message = str(refused.value)
    assert f"image {second.id} (#2) no longer matches its sha256" in message
    assert "atelier doctor" in message and "Nothing was exported" in message
    assert f"image {first.id} " not in message
    assert not (tmp_path / "exports").exists()
    assert files_on_disk(tmp_path / "images") == kept  # reported, never "repaired"


def test_export_catches_a_file_that_changes_while_the_zip_is_written(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conversation = repo.create_conversation("changing")
    add_generated(repo, conversation.id, "a lighthouse", index=1)
    second = add_generated(repo, conversation.id, "a boat", index=2)
    reads = 0
    real_read = repo.files.read

    def read_then_damage(digest: str) -> bytes:
        nonlocal reads
        reads += 1
        data = real_read(digest)
        return data + b"x" if reads > 2 and digest == second.sha256 else data  # second pass only

    monkeypatch.setattr(repo.files, "read", read_then_damage)
    out = tmp_path / "changing.zip"
    with pytest.raises(ArchiveError, match=r"#2\) no longer matches its sha256"):
        export_conversation(repo, conversation.id, out)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("changing")) == []


def test_export_to_a_folder_and_import_of_a_folder_say_so(repo: Repository, tmp_path: Path) -> None:
    from storage.archive import read_archive

    conversation = repo.create_conversation("folders")
    add_generated(repo, conversation.id, "a lighthouse", index=1)
    folder = tmp_path / "somewhere"
    folder.mkdir()
    with pytest.raises(ArchiveError, match=f"OUT.zip must be a file path; {folder} is a folder"):
        export_conversation(repo, conversation.id, folder)
    with pytest.raises(ArchiveError, match=f"{folder} is a folder, not a zip file"):
        read_archive(folder)
    assert list(folder.iterdir()) == [] and not (tmp_path / "somewhere.partial").exists()


def test_an_imported_copy_names_its_own_images_in_params(repo: Repository, tmp_path: Path) -> None:
    """ "A re-roll of #1" must still mean the copy's #1 once the ids are renumbered."""
    elsewhere = repo.create_conversation("elsewhere")
    outside = add_generated(repo, elsewhere.id, "an unrelated boat", index=1)
    conversation = repo.create_conversation("rerolls")
    first = add_generated(repo, conversation.id, "a lighthouse", index=2)
    add_generated(
        repo,
        conversation.id,
        "a lighthouse",
        index=3,
        params={"regenerated_from": first.id, "replay_of": outside.id, "steps": 4},
    )
    zip_path = tmp_path / "rerolls.zip"
    export_conversation(repo, conversation.id, zip_path)
    repo.rename_conversation(conversation.id, "rerolls, renamed")  # else it is the same one
    copy_id = import_conversation(repo, zip_path)  # the ids are taken here: renumbered
    copy_first, copy_second = repo.conversation_images(copy_id)
    assert copy_first.id != first.id
    assert copy_second.params == {"regenerated_from": copy_first.id, "steps": 4}
