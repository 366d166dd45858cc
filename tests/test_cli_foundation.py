"""The `atelier` command over a real data dir: what scripts parse (--json), what people read, and
how it fails (one line on stderr, exit 1, no traceback, nothing written)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from assistant.cli import app, streamlit_flags
from storage.files import sha256_hex
from storage.repository import Repository
from tests.storage.helpers import add_generated, files_on_disk

SENTINEL_KEY = "sk-test-SENTINEL-1234567890"
IMAGE_KEYS = {
    "id", "conversation_id", "message_id", "generation_id", "parent_id", "number", "operation",
    "instruction", "prompt", "negative_prompt", "revised_prompt", "backend", "model", "seed",
    "width", "height", "params", "sha256", "mask_sha256", "created_at", "path", "mask_path",
}  # fmt: skip


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's own ATELIER_* / OPENAI_* settings must not reach the command under test."""
    drop_own_settings(monkeypatch)


def drop_own_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("ATELIER_", "OPENAI_")):
            monkeypatch.delenv(name)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return make_data_dir(tmp_path / "data")


def make_data_dir(root: Path) -> Path:
    """A data dir holding one conversation: #1 → #2 → #3 (edits) and #1 → #4 (variation), #5 alone."""
    repo = Repository.open(f"sqlite:///{root / 'atelier.db'}", root / "images")
    conversation = repo.create_conversation("Foxes")
    first = add_generated(repo, conversation.id, "a red fox in snow", index=1)
    second = add_generated(repo, conversation.id, "a red fox, night", parent_id=first.id, index=2,
                           instruction="make it night")  # fmt: skip
    add_generated(repo, conversation.id, "a red fox, night, stars", parent_id=second.id, index=3)
    add_generated(repo, conversation.id, "fox variation", parent_id=first.id, operation="variation", index=4)
    add_generated(repo, conversation.id, "an owl [bold]on a [from:to:0.5] branch[/i]", index=5)
    repo.db.dispose()
    return root


def invoke(data_dir: Path, *args: str, **env: str) -> Result:
    return CliRunner().invoke(app, list(args), env={"ATELIER_DATA_DIR": str(data_dir), **env})


def state(data_dir: Path) -> tuple[dict[str, int], dict[str, bytes]]:
    """Row counts and every file byte: what "nothing was written" is checked against."""
    repo = Repository.open(f"sqlite:///{data_dir / 'atelier.db'}", data_dir / "images")
    try:
        return repo.counts(), files_on_disk(data_dir / "images")
    finally:
        repo.db.dispose()


def assert_clean_failure(result: Result, *fragments: str) -> None:
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    message = result.stderr.strip()
    assert "\n" not in message, message
    assert message.startswith("Error: ")
    for fragment in fragments:
        assert fragment in message
    assert "Traceback" not in result.output
    assert result.stdout == ""


def test_history_json_is_stable_and_newest_first(data_dir: Path) -> None:
    result = invoke(data_dir, "history", "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert set(document) == {"conversation_id", "search", "total", "images"}
    assert [image["number"] for image in document["images"]] == [5, 4, 3, 2, 1] and document["total"] == 5
    for image in document["images"]:
        assert set(image) == IMAGE_KEYS
        assert Path(image["path"]).is_file()

    searched = json.loads(invoke(data_dir, "history", "--search", "night", "--json").stdout)
    assert [image["number"] for image in searched["images"]] == [3, 2]
    one = json.loads(invoke(data_dir, "history", "-c", "1", "--limit", "2", "--json").stdout)
    assert one["conversation_id"] == 1 and [i["number"] for i in one["images"]] == [5, 4]
    assert one["total"] == 5  # two shown of five: a script can tell there are more


def test_history_says_when_it_shows_only_the_newest(data_dir: Path) -> None:
    cut = invoke(data_dir, "history", "--limit", "2")
    assert cut.exit_code == 0, cut.output
    assert "showing the newest 2 of 5; --limit 5 shows all" in " ".join(cut.stdout.split())
    # #4's parent #1 is not on the page; the parent column still says "#1", not "id 1"
    (row,) = [line for line in cut.stdout.splitlines() if "│ #4 " in line]
    assert "│ #1 " in row and " id " not in row
    assert "showing" not in invoke(data_dir, "history").stdout  # all five fit the default 50


def test_history_table_for_people(data_dir: Path) -> None:
    result = invoke(data_dir, "history")
    assert result.exit_code == 0, result.output
    words = set(result.stdout.replace("│", " ").split())  # the table wraps cells at 80 columns
    assert {"#1", "#5", "variation", "owl", "fox"} <= words
    assert "[bold]on" in words  # prompt text is shown literally, not as rich markup


@pytest.mark.parametrize(
    "args", [["history"], ["show", "5"], ["lineage", "5"], ["history", "-s", "[/x] zebra"]]
)
def test_brackets_in_user_text_are_printed_not_interpreted(data_dir: Path, args: list[str]) -> None:
    """A1111 prompt syntax ([from:to:0.5]) or a stray [/i] must not crash rich's markup parser."""
    result = invoke(data_dir, *args)
    assert result.exit_code == 0, result.output
    flat = "".join(result.stdout.replace("│", " ").split())
    assert "[/i]" in flat or "[/x]" in flat
    assert "No images match 'zebra'" in invoke(data_dir, "history", "-s", "zebra").stdout


def test_show_json_points_at_the_file(data_dir: Path) -> None:
    result = invoke(data_dir, "show", "2", "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert set(document) == IMAGE_KEYS | {"generation"}
    path = Path(document["path"])
    assert path.is_file() and sha256_hex(path.read_bytes()) == document["sha256"]
    assert document["parent_id"] == 1 and document["instruction"] == "make it night"
    assert document["generation"]["inputs"] == [{"image_id": 1, "role": "init"}]
    text = invoke(data_dir, "show", "2")
    assert text.exit_code == 0 and "make it night" in text.stdout


def test_lineage_json_and_tree_mark_the_image(data_dir: Path) -> None:
    document = json.loads(invoke(data_dir, "lineage", "3", "--json").stdout)
    assert document["image_id"] == 3 and document["root_id"] == 1
    nodes = [(n["id"], n["depth"], n["is_target"]) for n in document["nodes"]]
    assert nodes == [(1, 0, False), (2, 1, False), (4, 1, False), (3, 2, True)]
    assert set(document["nodes"][0]) == {
        "id", "number", "conversation_id", "parent_id", "depth", "operation", "instruction", "prompt",
        "is_target",
    }  # fmt: skip
    tree = invoke(data_dir, "lineage", "3")
    assert tree.exit_code == 0
    marked = [line for line in tree.stdout.splitlines() if "◀ this image" in line]
    assert len(marked) == 1 and "#3" in marked[0]


def test_export_import_round_trip(data_dir: Path, tmp_path: Path) -> None:
    zip_path = tmp_path / "foxes.zip"
    exported = invoke(data_dir, "export", "1", str(zip_path))
    assert exported.exit_code == 0, exported.output
    assert zipfile.is_zipfile(zip_path)

    other = tmp_path / "other"
    imported = invoke(other, "import", str(zip_path))
    assert imported.exit_code == 0, imported.output
    assert "Imported as conversation 1" in imported.stdout

    def comparable(root: Path) -> list[dict[str, Any]]:
        images = json.loads(invoke(root, "history", "--json").stdout)["images"]
        return [{k: v for k, v in image.items() if k not in ("path", "mask_path")} for image in images]

    assert comparable(other) == comparable(data_dir)
    assert files_on_disk(other / "images") == files_on_disk(data_dir / "images")
    again = invoke(other, "import", str(zip_path))
    assert again.exit_code == 0, again.output
    assert "already here as conversation 1" in again.stdout and "nothing was imported" in again.stdout
    doctor = json.loads(invoke(other, "doctor", "--json").stdout)
    assert doctor["ok"] and doctor["counts"]["images"] == 5


def test_doctor_sweeps_an_orphan_and_reports_ok(data_dir: Path) -> None:
    orphan = data_dir / "images" / "00" / ("0" * 64 + ".png")
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"left by a crash")
    report = json.loads(invoke(data_dir, "doctor", "--json").stdout)
    assert report["ok"] and report["swept_orphan_files"] == 1 and report["images_checked"] == 5
    assert not orphan.exists()


def _zip_with_traversal(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("atelier-export.json", "{}")
        archive.writestr("../../escaped.png", b"boo")
    return path


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["show", "999"], ["no image with id 999"]),
        (["show", "abc"], ["must be a number"]),
        (["lineage", "999", "--json"], ["no image with id 999"]),
        (["history", "-c", "42"], ["no conversation 42"]),
        (["export", "42", "{tmp}/out.zip"], ["no conversation 42"]),
        (["import", "{tmp}/evil.zip"], ["outside the archive"]),
        (["import", "{tmp}/notes.txt"], ["not a complete zip file"]),
        (["import", "{tmp}/missing[/bold].zip"], ["missing[/bold].zip", "does not exist"]),
    ],
)
def test_bad_input_fails_cleanly_and_writes_nothing(
    data_dir: Path, tmp_path: Path, args: list[str], fragments: list[str]
) -> None:
    _zip_with_traversal(tmp_path / "evil.zip")
    (tmp_path / "notes.txt").write_text("not a zip")
    before = state(data_dir)
    result = invoke(data_dir, *(arg.format(tmp=tmp_path) for arg in args))
    assert_clean_failure(result, *fragments)
    assert state(data_dir) == before
    assert not (tmp_path / "out.zip").exists()
    assert not (tmp_path.parent / "escaped.png").exists()


def test_a_database_that_is_not_sqlite(data_dir: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(os.urandom(4096))
    junk_bytes = junk.read_bytes()
    files_before = files_on_disk(data_dir / "images")
    result = invoke(data_dir, "history", ATELIER_DATABASE_URL=f"sqlite:///{junk}")
    assert_clean_failure(result, "is not an SQLite database")
    assert junk.read_bytes() == junk_bytes
    assert files_on_disk(data_dir / "images") == files_before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("junk")) == ["junk.db"]


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["show", "999"], ["There is no image with id 999."]),
        (["show", "999", "--json"], ["There is no image with id 999."]),
        (["show", "abc"], ["must be a number"]),
        (["lineage", "999"], ["There is no image with id 999."]),
        (["history", "-c", "3"], ["There is no conversation 3."]),
        (["export", "3", "{tmp}/out.zip"], ["There is no conversation 3."]),
        (["import", "{tmp}/notes.txt"], ["not a complete zip file"]),
        (["import", "{tmp}/evil.zip"], ["outside the archive"]),
        (["replay", "999"], ["There is no image with id 999."]),
        (["chat", "-c", "5", "a red fox"], ["There is no conversation 5."]),
    ],
)
def test_bad_input_on_a_fresh_machine_creates_no_data_dir(
    tmp_path: Path, args: list[str], fragments: list[str]
) -> None:
    _zip_with_traversal(tmp_path / "evil.zip")
    (tmp_path / "notes.txt").write_text("not a zip")
    fresh = tmp_path / "fresh"
    result = invoke(fresh, *(arg.format(tmp=tmp_path) for arg in args))
    assert_clean_failure(result, *fragments)
    assert not fresh.exists()  # no folder, no atelier.db, no images/
    assert not (tmp_path / "out.zip").exists() and not (tmp_path / "out.zip.partial").exists()


def test_looking_at_an_empty_history_creates_nothing(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh"
    listing = invoke(fresh, "history", "--json")
    assert listing.exit_code == 0, listing.output
    assert json.loads(listing.stdout) == {"conversation_id": None, "search": None, "total": 0, "images": []}
    assert "No images yet." in invoke(fresh, "history").stdout
    doctor = invoke(fresh, "doctor", "--json")
    assert doctor.exit_code == 0, doctor.output
    report = json.loads(doctor.stdout)
    assert report["ok"] is True and report["images_checked"] == 0 and report["counts"]["images"] == 0
    assert not fresh.exists()


def test_a_database_elsewhere_that_does_not_exist_is_not_created(tmp_path: Path) -> None:
    elsewhere = tmp_path / "db" / "library.db"
    result = invoke(tmp_path / "fresh", "show", "1", ATELIER_DATABASE_URL=f"sqlite:///{elsewhere}")
    assert_clean_failure(result, "There is no image with id 1.")
    assert not (tmp_path / "db").exists() and not (tmp_path / "fresh").exists()


def test_export_with_a_missing_image_file_fails_cleanly(data_dir: Path, tmp_path: Path) -> None:
    repo = Repository.open(f"sqlite:///{data_dir / 'atelier.db'}", data_dir / "images")
    third = repo.get_image(3)
    repo.image_path(third).unlink()
    repo.db.dispose()
    out_zip = tmp_path / "exports" / "foxes.zip"
    result = invoke(data_dir, "export", "1", str(out_zip))
    assert_clean_failure(result, "image 3 (#3) is missing", "atelier doctor")
    assert not (tmp_path / "exports").exists()


def test_a_data_dir_that_is_a_file(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "data"
    not_a_dir.write_text("oops")
    for args in (["history"], ["show", "1"], ["doctor"], ["chat", "a red fox"]):
        assert_clean_failure(invoke(not_a_dir, *args), "is a file, not a folder")
    assert not_a_dir.read_text() == "oops"


def test_config_masks_the_key(tmp_path: Path) -> None:
    for args in (["config"], ["config", "--json"]):
        result = invoke(tmp_path, *args, OPENAI_API_KEY=SENTINEL_KEY)
        assert result.exit_code == 0, result.output
        assert SENTINEL_KEY not in result.output and "SENTINEL" not in result.output
        assert "****7890" in result.output
    shown = json.loads(invoke(tmp_path, "config", "--json", OPENAI_API_KEY=SENTINEL_KEY).stdout)
    assert shown["effective_backend"] == "openai"
    assert shown["data_dir"] == str(tmp_path)


def test_config_masks_passwords_in_every_url(tmp_path: Path) -> None:
    urls = {
        "ATELIER_OPENAI_BASE_URL": "https://images:img-pass-XYZ@proxy.example/v1",
        "ATELIER_CHAT_BASE_URL": "http://bob:chat-pass-XYZ@127.0.0.1:11434/v1",
        "ATELIER_DATABASE_URL": "postgresql://atelier:db-pass-XYZ@db.example/atelier",
    }
    for args in (["config"], ["config", "--json"]):
        result = invoke(tmp_path, *args, **urls)
        assert result.exit_code == 0, result.output
        assert "pass-XYZ" not in result.output
        assert "bob:***@127.0.0.1:11434" in result.output and "images:***@proxy.example" in result.output


# ----- the installed console script, in a real process -------------------------------------


def _atelier() -> str:
    beside_python = Path(sys.executable).with_name("atelier")
    found = str(beside_python) if beside_python.exists() else shutil.which("atelier")
    # The test command installs the project, so a missing script is a packaging bug, not a skip.
    assert found is not None, "the `atelier` console script is not installed (check [project.scripts])"
    return found


def _run(data_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("ATELIER_", "OPENAI_"))}
    clean.update({"ATELIER_DATA_DIR": str(data_dir), "COLUMNS": "200", **env})
    return subprocess.run(
        [_atelier(), *args], capture_output=True, text=True, env=clean, timeout=60, check=False
    )


def test_console_script_json_and_errors(data_dir: Path, tmp_path: Path) -> None:
    listing = _run(data_dir, "lineage", "2", "--json")
    assert listing.returncode == 0, listing.stderr
    assert [n["id"] for n in json.loads(listing.stdout)["nodes"] if n["is_target"]] == [2]

    before = state(data_dir)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"SQLite format 2\x00" + b"\xff" * 4000)
    failed = _run(data_dir, "show", "1", ATELIER_DATABASE_URL=f"sqlite:///{junk}")
    assert failed.returncode == 1
    assert failed.stdout == ""
    assert failed.stderr.strip().count("\n") == 0 and "is not an SQLite database" in failed.stderr
    assert "Traceback" not in failed.stderr
    assert state(data_dir) == before


@pytest.mark.parametrize("as_json", [False, True])
def test_a_reader_that_goes_away_does_not_stop_the_turn(tmp_path: Path, as_json: bool) -> None:
    """`atelier chat "…" | head -1`: the pipe closes after the first line; the image is still made
    and stored, and the command neither fails nor prints a broken-pipe traceback."""
    data_dir = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ATELIER_", "OPENAI_"))}
    env["ATELIER_DATA_DIR"] = str(data_dir)
    args = [_atelier(), "chat", "a lighthouse at dusk", *(["--json"] if as_json else [])]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # the reader is gone before the first event is written
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=60) == 0, stderr
    assert "Broken pipe" not in stderr and "Traceback" not in stderr
    repo = Repository.open(f"sqlite:///{data_dir / 'atelier.db'}", data_dir / "images")
    try:
        (image,) = repo.list_images()
        assert image.instruction == "a lighthouse at dusk"
        assert repo.image_path(image).is_file()
    finally:
        repo.db.dispose()


@pytest.mark.parametrize("args", [["history"], ["history", "--json"], ["show", "2"], ["lineage", "2"]])
def test_listings_piped_into_a_reader_that_stops_end_quietly(data_dir: Path, args: list[str]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ATELIER_", "OPENAI_"))}
    env["ATELIER_DATA_DIR"] = str(data_dir)
    process = subprocess.Popen([_atelier(), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=60) == 0, stderr
    assert stderr == ""


def _streamlit_config(cwd: Path, *flags: str) -> str:
    shown = subprocess.run(
        [sys.executable, "-m", "streamlit", "config", "show", *flags],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    return shown.stdout


def test_the_app_never_reimports_its_modules_while_it_runs(tmp_path: Path) -> None:
    """A source change under a running app (a `git pull`) made Streamlit re-import every module,
    so the cached assistant met new classes and every upscale failed until a restart. Streamlit
    itself reads the flags `atelier ui` passes, and the project's config for `streamlit run`."""
    launched = _streamlit_config(tmp_path, *streamlit_flags(8599, "127.0.0.1"))
    project = _streamlit_config(Path(__file__).resolve().parents[1])
    default = _streamlit_config(tmp_path)
    for shown in (launched, project):
        assert 'fileWatcherType = "none"' in shown and "runOnSave = false" in shown
    assert 'fileWatcherType = "none"' not in default  # the check can fail: Streamlit's own default
    assert "headless = true" in launched and "port = 8599" in launched
