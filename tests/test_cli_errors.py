"""Bad input at the command line, as a QA pass found it: every case ends as one line on stderr
with a non-zero exit, never a traceback, and leaves what is stored exactly as it was."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from assistant.cli import strict_json
from storage.files import sha256_hex
from storage.repository import Repository
from tests.test_cli_foundation import (
    _run,
    assert_clean_failure,
    drop_own_settings,
    invoke,
    make_data_dir,
    state,
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    drop_own_settings(monkeypatch)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """One conversation of five images: #1 → #2 → #3, #1 → #4, #5 (see test_cli_foundation)."""
    return make_data_dir(tmp_path / "data")


HUGE = "99999999999999999999"  # past any SQL integer: sqlite3 raises OverflowError if asked
PASSWORD = "hunter2-SECRET-pw"


def _strict(text: str) -> Any:
    """json.loads that refuses NaN and Infinity, as JavaScript's JSON.parse and jq do."""

    def refuse(constant: str) -> Any:
        raise AssertionError(f"{constant} in the JSON output")

    return json.loads(text, parse_constant=refuse)


def _file_bytes(root: Path) -> dict[str, bytes]:
    """Every stored byte: the database file and the images. Opening a WAL database leaves an
    empty -wal and an -shm index beside it; a write would put frames in the -wal."""
    wal = root / "atelier.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0, "the database was written"
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.endswith(("-wal", "-shm"))
    }


# ----- 1. database URLs and ids no database can hold -----------------------------------------


@pytest.mark.parametrize(
    ("url", "fragments"),
    [
        ("garbage", ["ATELIER_DATABASE_URL is not a database URL", "sqlite:///"]),
        (f"postgres//u:{PASSWORD}@x", ["ATELIER_DATABASE_URL is not a database URL"]),
        (f"postgresql://u:{PASSWORD}@localhost:1/x", ["driver psycopg is not installed", "psycopg[binary]"]),
        (f"mysql+pymysql://u:{PASSWORD}@localhost:1/x", ["driver pymysql", "pip install 'PyMySQL'"]),
        (f"nosuchdb://u:{PASSWORD}@localhost/x", ["'nosuchdb'", "ATELIER_DATABASE_URL"]),
    ],
)
def test_a_database_url_that_cannot_work(data_dir: Path, url: str, fragments: list[str]) -> None:
    if "pymysql" in url and _importable("pymysql"):
        pytest.skip("PyMySQL is installed here")
    before = state(data_dir)
    for args in (["history"], ["show", "1"], ["chat", "a red fox"]):
        result = invoke(data_dir, *args, ATELIER_DATABASE_URL=url)
        assert_clean_failure(result, *fragments)
        assert PASSWORD not in result.output
    assert state(data_dir) == before


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["show", HUGE], [f"There is no image with id {HUGE}."]),
        (["show", HUGE, "--json"], [f"There is no image with id {HUGE}."]),
        (["lineage", HUGE], [f"There is no image with id {HUGE}."]),
        (["replay", HUGE], [f"There is no image with id {HUGE}."]),
        (["replay", HUGE, "--from-root", "--seed", "3"], [f"There is no image with id {HUGE}."]),
        (["history", "-c", HUGE], [f"There is no conversation {HUGE}."]),
        (["chat", "-c", HUGE, "a red fox"], [f"There is no conversation {HUGE}."]),
        (["export", HUGE, "{tmp}/out.zip"], [f"There is no conversation {HUGE}."]),
        (["history", "--limit", HUGE], ["--limit must be at most 9223372036854775807"]),
        (["history", "--limit", "0"], ["--limit must be at least 1, got 0."]),
        (["history", "--limit", "-3"], ["--limit must be at least 1, got -3."]),
        (["history", "--limit", "lots"], ["--limit must be a whole number"]),
    ],
)
def test_ids_past_any_database_integer(
    data_dir: Path, tmp_path: Path, args: list[str], fragments: list[str]
) -> None:
    before = state(data_dir)
    result = invoke(data_dir, *(arg.format(tmp=tmp_path) for arg in args))
    assert_clean_failure(result, *fragments)
    assert state(data_dir) == before
    assert not (tmp_path / "out.zip").exists()


# ----- 2. a damaged database -------------------------------------------------------------------


def _damaged_copy(data_dir: Path, tmp_path: Path, *, offset: int | None = None) -> Path:
    """A copy of the data dir with 4 KB of its database overwritten (the images table's root
    page unless `offset` says where), as a failing disk or a bad copy leaves it."""
    copy = tmp_path / "damaged"
    shutil.copytree(data_dir, copy)
    database = copy / "atelier.db"
    with sqlite3.connect(database) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every page is in the main file
        page_size = connection.execute("PRAGMA page_size").fetchone()[0]
        root = connection.execute("SELECT rootpage FROM sqlite_master WHERE name = 'images'").fetchone()[0]
    connection.close()
    with database.open("r+b") as handle:
        handle.seek((root - 1) * page_size if offset is None else offset)
        handle.write(b"\xab" * (4096 - (offset or 0) % 4096))
    return copy


@pytest.mark.parametrize("as_json", [False, True])
def test_doctor_reports_a_damaged_database_and_sweeps_nothing(
    data_dir: Path, tmp_path: Path, as_json: bool
) -> None:
    """The QA's reproduction: 4 KB overwritten at offset 8192 of atelier.db."""
    damaged = _damaged_copy(data_dir, tmp_path, offset=8192)
    unnamed = damaged / "images" / "00" / ("0" * 64 + ".png")  # a file no row names: not touched
    unnamed.parent.mkdir(parents=True, exist_ok=True)
    unnamed.write_bytes(b"maybe the only copy of an image whose row is unreadable")
    before = _file_bytes(damaged)

    result = invoke(damaged, "doctor", *(["--json"] if as_json else []))
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and result.stderr == ""
    if as_json:
        report = _strict(result.stdout)
        assert report["database_errors"] and not report["nothing_lost"] and not report["ok"]
        assert any("database" in line for line in report["problems"])
        advice = " ".join(report["advice"])
    else:
        assert "PROBLEMS FOUND" in result.stdout and "database:" in result.stdout
        advice = result.stdout
    assert ".recover" in advice and "atelier import" in advice and "--no-sweep" in advice
    assert _file_bytes(damaged) == before  # nothing swept, the database not written


def test_a_database_too_damaged_to_read(data_dir: Path, tmp_path: Path) -> None:
    damaged = _damaged_copy(data_dir, tmp_path)
    before = _file_bytes(damaged)
    for args in (
        ["show", "1"],
        ["history"],
        ["lineage", "2", "--json"],
        ["export", "1", str(tmp_path / "o.zip")],
    ):
        assert_clean_failure(invoke(damaged, *args), "database is damaged", "atelier doctor")
    doctor = invoke(damaged, "doctor", "--json")
    assert doctor.exit_code == 1, doctor.output
    assert _strict(doctor.stdout)["database_errors"]
    assert _file_bytes(damaged) == before
    assert not (tmp_path / "o.zip").exists() and not (tmp_path / "o.zip.partial").exists()


def test_doctor_on_a_database_too_damaged_to_open(data_dir: Path, tmp_path: Path) -> None:
    # the schema page, past the 100-byte header: still an SQLite file, so not "not a database"
    damaged = _damaged_copy(data_dir, tmp_path, offset=100)
    before = _file_bytes(damaged)
    result = invoke(damaged, "doctor", "--json")
    assert result.exit_code == 1, result.output
    report = _strict(result.stdout)
    assert report["database_errors"] and report["counts"] is None and not report["nothing_lost"]
    assert_clean_failure(invoke(damaged, "history"), "atelier doctor")
    assert _file_bytes(damaged) == before


# ----- 3. export refuses a file whose bytes changed ----------------------------------------------


def test_export_refuses_an_image_file_that_no_longer_matches_its_hash(data_dir: Path, tmp_path: Path) -> None:
    repo = Repository.open(f"sqlite:///{data_dir / 'atelier.db'}", data_dir / "images")
    for image_id in (3, 5):
        path = repo.image_path(repo.get_image(image_id))
        path.write_bytes(path.read_bytes() + b"appended")
    repo.db.dispose()
    before = state(data_dir)
    out_zip = tmp_path / "exports" / "dx.zip"
    result = invoke(data_dir, "export", "1", str(out_zip))
    assert_clean_failure(
        result, "images 3 (#3) and 5 (#5)", "sha256", "atelier doctor", "Nothing was exported"
    )
    assert not (tmp_path / "exports").exists()
    assert state(data_dir) == before


def test_export_never_overwrites_the_history_it_backs_up(data_dir: Path, tmp_path: Path) -> None:
    """The QA destroyed atelier.db with `atelier export 1 atelier.db`; an existing file is kept
    unless --force, and Atelier's own files (database, stored images) are refused even then."""
    repo = Repository.open(f"sqlite:///{data_dir / 'atelier.db'}", data_dir / "images")
    stored_image = repo.image_path(repo.get_image(2))
    repo.db.dispose()
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    before = state(data_dir)
    database = data_dir / "atelier.db"
    for target, force, fragment in (
        (database, True, "is Atelier's database"),
        (data_dir / "sub" / ".." / "atelier.db", True, "is Atelier's database"),
        (stored_image, True, "inside Atelier's image store"),
        (data_dir / "images" / "new.zip", False, "inside Atelier's image store"),
        (notes, False, "already exists; pass --force"),
        (Path("/dev/null"), True, "is not a regular file"),
        (notes / "out.zip", False, f"{notes} is a file, not a folder"),
    ):
        args = ["export", "1", str(target), *(["--force"] if force else [])]
        assert_clean_failure(invoke(data_dir, *args), fragment)
        assert ".partial" not in invoke(data_dir, *args).stderr
    assert state(data_dir) == before
    assert notes.read_text() == "my notes"
    assert invoke(data_dir, "history").exit_code == 0  # the database still opens

    replaced = invoke(data_dir, "export", "1", str(notes), "--force")
    assert replaced.exit_code == 0, replaced.output
    assert notes.read_bytes()[:2] == b"PK"  # now a zip
    assert state(data_dir) == before


# ----- 5. strict JSON ------------------------------------------------------------------------------


def test_json_output_is_strict_even_for_a_stored_nan(data_dir: Path) -> None:
    """A row written before non-finite settings were refused must not make `--json` invalid."""
    with sqlite3.connect(data_dir / "atelier.db") as connection:
        connection.execute("""UPDATE images SET params = '{"steps": 4, "guidance": NaN}' WHERE id = 1""")
    connection.close()
    shown = invoke(data_dir, "show", "1", "--json")
    assert shown.exit_code == 0, shown.output
    assert _strict(shown.stdout)["params"] == {"steps": 4, "guidance": None}
    listed = invoke(data_dir, "history", "--json")
    assert listed.exit_code == 0 and "NaN" not in listed.stdout
    _strict(listed.stdout)
    assert invoke(data_dir, "show", "1").exit_code == 0
    assert strict_json({"a": [float("inf"), 1.5, float("-inf")]}) == '{"a": [null, 1.5, null]}'


def test_nan_settings_are_refused_before_anything_is_stored(data_dir: Path) -> None:
    before = state(data_dir)
    for name in ("ATELIER_GUIDANCE", "ATELIER_OPENAI_TIMEOUT", "ATELIER_COST_BUDGET_USD"):
        for value in ("nan", "inf"):
            result = invoke(data_dir, "chat", "--json", "a red fox", **{name: value})
            assert_clean_failure(result, f"{name}='{value}' is not a finite number")
    assert state(data_dir) == before


# ----- 11. paths and hashes print whole --------------------------------------------------------


def test_show_prints_the_whole_path_and_hash_at_80_columns_into_a_file(data_dir: Path) -> None:
    deep = data_dir.parent / ("a-rather-long-folder-name-" * 3) / "data"
    shutil.copytree(data_dir, deep)
    document = _strict(_run(deep, "show", "2", "--json").stdout)
    result = _run(deep, "show", "2", COLUMNS="80")  # stdout is a pipe, as when redirected
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert f"path    {document['path']}".split() in [line.split() for line in lines]
    assert f"sha256  {document['sha256']}".split() in [line.split() for line in lines]
    assert "…" not in "".join(line for line in lines if document["sha256"][:12] in line)
    assert sha256_hex(Path(document["path"]).read_bytes()) == document["sha256"]


# ----- 12. settings name the variable, the value and what is allowed ---------------------------


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"ATELIER_BACKEND": "nonsense"},
            "ATELIER_BACKEND='nonsense' is not a backend; use auto, offline, openai or diffusers.",
        ),
        (
            {"ATELIER_STYLE": "nonexistentstyle"},
            "ATELIER_STYLE='nonexistentstyle' is not a style; use one of",
        ),
        ({"ATELIER_STEPS": "-3"}, "ATELIER_STEPS='-3' is out of range; use a whole number from 1 to 100"),
        ({"ATELIER_STEPS": "120"}, "ATELIER_STEPS='120' is out of range; use a whole number from 1 to 100"),
        ({"ATELIER_STEPS": "1000"}, "ATELIER_STEPS='1000' is out of range; use a whole number from 1 to 100"),
        (
            {"ATELIER_BACKEND": "openai", "ATELIER_STEPS": "1000"},
            "ATELIER_STEPS='1000' is out of range; use a whole number from 1 to 150 (ATELIER_MAX_STEPS)",
        ),
        ({"ATELIER_STEPS": "many"}, "ATELIER_STEPS='many' is not a whole number."),
        (
            {"ATELIER_COST_BUDGET_USD": "-1"},
            "ATELIER_COST_BUDGET_USD='-1' is out of range; use a number of at least 0",
        ),
        (
            {"ATELIER_SEED": "-5"},
            "ATELIER_SEED='-5' is out of range; use a whole number from 0 to 4294967295, or -1",
        ),
        ({"ATELIER_SEED": "4294967296"}, "from 0 to 4294967295"),
        (
            {"ATELIER_WIDTH": "9000"},
            "ATELIER_WIDTH='9000' is out of range; use a whole number from 1 to 2048",
        ),
        ({"ATELIER_DIFFUSERS_COMPILE": "maybe"}, "ATELIER_DIFFUSERS_COMPILE='maybe' is not true or false"),
        ({"ATELIER_CHAT_ON_FAILURE": "shrug"}, "ATELIER_CHAT_ON_FAILURE='shrug' is not a chat failure mode"),
    ],
)
def test_bad_settings_are_named_before_anything_is_stored(
    data_dir: Path, env: dict[str, str], message: str
) -> None:
    before = state(data_dir)
    result = invoke(data_dir, "chat", "a red fox", **env)
    assert_clean_failure(result, message)
    assert "pydantic" not in result.output and "input_value" not in result.output
    assert state(data_dir) == before  # not even an empty conversation


def test_a_bad_setting_on_a_fresh_machine_creates_nothing(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh"
    assert_clean_failure(invoke(fresh, "chat", "a red fox", ATELIER_STEPS="-3"), "ATELIER_STEPS='-3'")
    assert not fresh.exists()


def test_replay_refuses_a_seed_out_of_range_instead_of_wrapping_it(data_dir: Path) -> None:
    from assistant.cli import _parse_seed

    before = state(data_dir)
    for seed in ("-5", "4294967296"):
        result = invoke(data_dir, "replay", "1", "--from-root", "--seed", seed)
        assert_clean_failure(result, "--seed must be from 0 to 4294967295 (or -1 for a new one)")
    assert state(data_dir) == before
    drawn = {_parse_seed("-1") for _ in range(5)}
    assert all(seed is not None and 0 <= seed <= 2**32 - 1 for seed in drawn) and len(drawn) > 1
    assert _parse_seed("0") == 0 and _parse_seed(None) is None


# ----- 13. the data folder ---------------------------------------------------------------------


def test_data_dir_expands_the_home_folder_and_blank_means_the_default(tmp_path: Path) -> None:
    from assistant.settings import default_data_dir

    home = tmp_path / "home"
    home.mkdir()
    shown = invoke(tmp_path, "config", "--json", ATELIER_DATA_DIR="~/atelier-data", HOME=str(home))
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["data_dir"] == str(home / "atelier-data")
    blank = invoke(tmp_path, "config", "--json", ATELIER_DATA_DIR="")
    assert json.loads(blank.stdout)["data_dir"] == str(default_data_dir())

    made = _run(tmp_path / "unused", "chat", "a red fox", ATELIER_DATA_DIR="~/atelier-data", HOME=str(home),
                ATELIER_STEPS="2", ATELIER_WIDTH="64", ATELIER_HEIGHT="64")  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert (home / "atelier-data" / "atelier.db").is_file()
    assert not (Path.cwd() / "~").exists()


def test_a_data_dir_that_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    target = blocker / "data"
    for args in (["chat", "a red fox"], ["import", str(tmp_path / "x.zip")]):
        if args[0] == "import":
            _an_export(tmp_path / "x.zip", tmp_path)
        result = invoke(target, *args)
        assert_clean_failure(result, f"Cannot create the data folder {target}: Not a directory")
        assert "Errno" not in result.output
    assert blocker.read_text() == "not a folder"


def _an_export(path: Path, tmp_path: Path) -> None:
    source = tmp_path / "source"
    repo = Repository.open(f"sqlite:///{source / 'atelier.db'}", source / "images")
    repo.create_conversation("empty")
    repo.db.dispose()
    assert invoke(source, "export", "1", str(path)).exit_code == 0


# ----- 15. a folder where a file is wanted -------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["chat", "--image", "{tmp}", "make it night"], ["The image {tmp} is a folder"]),
        (["chat", "--mask", "{tmp}", "make it night"], ["The mask {tmp} is a folder"]),
        (["import", "{tmp}"], ["{tmp} is a folder, not a zip file"]),
        (["export", "1", "{tmp}"], ["OUT.zip must be a file path; {tmp} is a folder", "conversation-1.zip"]),
    ],
)
def test_a_folder_where_a_file_is_wanted(
    data_dir: Path, tmp_path: Path, args: list[str], fragments: list[str]
) -> None:
    folder = tmp_path / "a-folder"
    folder.mkdir()
    before = state(data_dir)
    result = invoke(data_dir, *(arg.format(tmp=folder) for arg in args))
    assert_clean_failure(result, *(fragment.format(tmp=folder) for fragment in fragments))
    assert "Errno" not in result.output and "does not exist" not in result.output
    assert state(data_dir) == before
    assert list(folder.iterdir()) == [] and not (tmp_path / "a-folder.partial").exists()


def test_an_os_error_reads_as_a_sentence() -> None:
    from assistant.cli import _describe_os_error

    error = IsADirectoryError(21, "Is a directory")
    error.filename, error.filename2 = "/tmp.partial", "/tmp"
    assert _describe_os_error(error) == "Is a directory: /tmp.partial → /tmp"
    assert _describe_os_error(PermissionError(13, "Permission denied", "/x/y")) == "Permission denied: /x/y"


def test_secrets_are_scrubbed_from_any_error_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Whatever raised it, an error line never carries a key or a URL's password."""
    import typer

    from assistant import cli

    monkeypatch.setenv("ATELIER_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-SCRUBME-1234567890")
    monkeypatch.setenv("ATELIER_CHAT_BASE_URL", f"http://bob:{PASSWORD}@127.0.0.1:1/v1")
    cli.load_settings()
    with pytest.raises(typer.Exit):
        cli._print_error(f"boom: sk-test-SCRUBME-1234567890 and\n{PASSWORD}")
    printed = capsys.readouterr().err
    assert printed.strip() == "Error: boom: *** and ***"


def test_a_failed_first_turn_leaves_no_empty_conversation(data_dir: Path) -> None:
    """The CLI QA's failing `atelier chat` runs each left a conversation with nothing in it;
    a failure inside an existing conversation stays in its record, as the UI shows it."""
    before = state(data_dir)
    for result, reason in (
        (invoke(data_dir, "chat", "a fox, seed 4294967296"), "Seeds are whole numbers from 0 to 4294967295"),
        (invoke(data_dir, "chat", "a fox", ATELIER_BACKEND="diffusers"), "No local model configured"),
    ):
        assert result.exit_code == 1 and reason in result.stderr and "Traceback" not in result.output
    assert state(data_dir) == before  # no conversation, message or file was added

    in_conversation = invoke(data_dir, "chat", "-c", "1", "a fox, seed 4294967296")
    assert in_conversation.exit_code == 1
    repo = Repository.open(f"sqlite:///{data_dir / 'atelier.db'}", data_dir / "images")
    try:
        statuses = [m.status for m in repo.messages(1)][-2:]
        assert statuses == ["ok", "failed"]  # the user's words and why it failed are kept
    finally:
        repo.db.dispose()


def test_small_mistakes_get_a_message_that_says_what_to_do(data_dir: Path, tmp_path: Path) -> None:
    """From the CLI QA: each of these gave a wrong or unhelpful message."""
    cases = [
        (["chat", "-c", "1", "--image", "/dev/null", "make it blue"], "is not a regular file"),
        (["show", "#3"], "not the #number"),
        (["show", "-5"], "must be a positive number, got '-5'"),
        (["lineage", "-3", "--json"], "must be a positive number, got '-3'"),
    ]
    for args, fragment in cases:
        assert_clean_failure(invoke(data_dir, *args), fragment)
    export = tmp_path / "whole.zip"
    assert invoke(data_dir, "export", "1", str(export)).exit_code == 0
    truncated = tmp_path / "cut.zip"
    truncated.write_bytes(export.read_bytes()[: export.stat().st_size // 2])
    assert_clean_failure(invoke(tmp_path / "fresh", "import", str(truncated)), "cut short")

    nowhere = tmp_path / "no-such-dir"
    doctor = invoke(nowhere, "doctor")
    assert (
        doctor.exit_code == 0
        and "Nothing stored yet" in doctor.stdout
        and "Nothing lost" not in doctor.stdout
    )
    assert _strict(invoke(nowhere, "doctor", "--json").stdout)["database_exists"] is False
    assert not nowhere.exists()


def test_replay_of_an_image_whose_file_is_gone_restores_it(tmp_path: Path) -> None:
    data = tmp_path / "real"
    small = {"ATELIER_WIDTH": "64", "ATELIER_HEIGHT": "64", "ATELIER_STEPS": "2"}
    assert invoke(data, "chat", "a red fox in snow", **small).exit_code == 0
    assert invoke(data, "chat", "-c", "1", "flip it horizontally", **small).exit_code == 0
    repo = Repository.open(f"sqlite:///{data / 'atelier.db'}", data / "images")
    generated, flipped = sorted(repo.list_images(), key=lambda i: i.id)
    path = repo.image_path(generated)
    stored = path.read_bytes()
    repo.db.dispose()
    path.unlink()
    replayed = invoke(data, "replay", str(generated.id), **small)
    assert replayed.exit_code == 0, replayed.output
    assert "its file was missing and is restored" in replayed.stdout
    assert path.read_bytes() == stored
    assert "Nothing lost" in invoke(data, "doctor").stdout
    words = invoke(data, "replay", str(flipped.id), **small).stdout
    assert "with its flip transform" in words and "on transform" not in words
    assert f"identical, pixel for pixel (sha256 {flipped.sha256[:16]}…)." in words

    path.unlink()  # the source of #2 gone: replaying #2 says to replay #1 first
    child = invoke(data, "replay", str(flipped.id), **small)
    assert child.exit_code == 1
    assert f"The file of #1 (image {generated.id}), which image {flipped.id} was made from, is missing" in (
        child.output
    )
    assert f"`atelier replay {generated.id}` restores it" in child.output
    assert invoke(data, "replay", str(generated.id), **small).exit_code == 0

    path.write_bytes(stored + b"damage")  # a file still there but no longer what its row names
    assert invoke(data, "doctor").exit_code == 1
    replayed = invoke(data, "replay", str(generated.id), "--json", **small)
    assert replayed.exit_code == 0, replayed.output
    report = _strict(replayed.stdout)
    assert (report["file_was_damaged"], report["restored"], report["sha256"]) == (
        True,
        True,
        generated.sha256,
    )
    assert path.read_bytes() == stored
    assert "Nothing lost" in invoke(data, "doctor").stdout


def test_an_unexpected_failure_is_logged_in_one_line_without_a_traceback(tmp_path: Path) -> None:
    """What the CLI's log handler prints when a backend fails in a way no message foresaw:
    the chat already shows one "Error:" line, so the log adds one line, not a traceback."""
    import subprocess
    import sys

    script = (
        "import logging\n"
        "from assistant import cli\n"
        "cli._one_line_logs()\n"
        "try:\n"
        "    raise TypeError('not all arguments converted\\nsecond line')\n"
        "except TypeError:\n"
        "    logging.getLogger('assistant.core').exception('backend %s failed', 'diffusers')\n"
        "logging.getLogger('assistant.core').info('not shown')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        "atelier: error: backend diffusers failed (TypeError: not all arguments converted)"
    ]
