"""The `atelier` command: a thin layer over `assistant` and `storage`.

Every command prints with rich, or one JSON document with `--json`. Expected failures
(unknown ids, bad archives, a file that is not a database) end as one line on stderr and
exit code 1 — never a traceback. Commands that only look (`history`, `show`, `lineage`,
`export`, `doctor`) never create a data dir or database; `import` checks the whole zip first.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import secrets
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text
from rich.tree import Tree
from sqlalchemy.exc import DBAPIError

from assistant.one_line import one_line
from assistant.runtime import database_exists, open_existing_repository, open_repository
from assistant.settings import MAX_SEED, RANDOM_SEED, Settings, describe_settings_error
from storage.db import DatabaseDamaged, StorageError, describe_database_error
from storage.models import Image
from storage.repository import ROW_ID_MAX, ImageFilter, IntegrityReport, NotFound, Repository
from storage.serialize import row_as_dict

app = typer.Typer(
    help="Atelier: conversational image generation with a history you own.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class _OneLineLogFormatter(logging.Formatter):
    """A log record as one stderr line: an unexpected failure is already one "Error:" line, so
    its traceback would only bury it (the brief: never a traceback). The exception's type and
    first line stay, for a bug report."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"atelier: {record.levelname.lower()}: {record.getMessage()}"
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            first = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
            line += f" ({type(error).__name__}{': ' + first if first else ''})"
        return line


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is now (a test runner swaps it per command), not the one
    it was made with, which may be closed by then."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


@app.callback()
def _one_line_logs() -> None:
    """Warnings and errors to stderr in one line each; handlers others installed stay."""
    root = logging.getLogger()
    if any(isinstance(handler, _StderrHandler) for handler in root.handlers):
        return
    handler = _StderrHandler()
    handler.setFormatter(_OneLineLogFormatter())
    handler.setLevel(logging.WARNING)
    root.addHandler(handler)


class _StdoutConsole(Console):
    """Rich exits the process when stdout's reader goes away; a chat turn must finish instead."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        _send_stdout_to_devnull()


out = _StdoutConsole(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

#: the shell's convention for a command stopped with Ctrl-C (128 + SIGINT)
EXIT_CANCELLED = 130
#: the largest id a row can have (SQLite's INTEGER; PostgreSQL's BIGINT): above it nothing exists
MAX_ROW_ID = ROW_ID_MAX

JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON document for scripts.")]


class CliError(Exception):
    """A one-line message for the user; the command exits non-zero."""


@contextmanager
def user_errors() -> Iterator[None]:
    """Expected failures become one line on stderr and exit code 1.

    OS errors (a data dir that is a file, no permission, disk full) and database errors
    (locked past the busy timeout, read-only file) are the user's environment, not a bug
    to show a traceback for. The message is printed as plain text, never as rich markup:
    a path like `x[/bold].zip` would otherwise crash the error printer itself.
    """
    try:
        yield
    except BrokenPipeError:  # `atelier history | head`: the reader has all it wanted
        _send_stdout_to_devnull()
        raise typer.Exit(0) from None
    except (CliError, StorageError) as exc:
        _print_error(str(exc))
    except OSError as exc:
        _print_error(_describe_os_error(exc))
    except DBAPIError as exc:  # a damaged file, a lock held too long, a server that went away
        _print_error(describe_database_error(exc))


def _describe_os_error(exc: OSError) -> str:
    """An OS error as people say it: "Permission denied: /x/y", not "[Errno 13] … '/x/y'"."""
    if exc.strerror and exc.filename is not None:
        where = f"{exc.filename} → {exc.filename2}" if exc.filename2 is not None else str(exc.filename)
        return f"{exc.strerror}: {where}"
    return exc.strerror or str(exc) or type(exc).__name__


#: secret values of the loaded settings, scrubbed from every error line whatever raised it
_secrets: set[str] = set()


def _remember_secrets(settings: Settings) -> None:
    from urllib.parse import urlsplit

    for key in (settings.openai_api_key, settings.chat_api_key):
        if key is not None:
            _secrets.add(key.get_secret_value())
    for url in (settings.database_url, settings.openai_base_url, settings.chat_base_url):
        try:
            password = urlsplit(url).password if url else None
        except ValueError:
            password = None
        if password:
            _secrets.add(password)


def _scrub(message: str) -> str:
    for secret in sorted(_secrets, key=len, reverse=True):
        if len(secret) >= 4:  # shorter ones would mangle ordinary words; messages mask URLs anyway
            message = message.replace(secret, "***")
    return message


def _print_error(message: str) -> None:
    line = " ".join(_scrub(message).split())  # one line, whatever the message held
    err.print(Text.assemble(("Error:", "red"), " ", line), highlight=False)
    raise typer.Exit(1) from None


def load_settings() -> Settings:
    """The settings, or one line naming each bad ATELIER_ variable (never a secret's value)."""
    try:
        settings = Settings()
    except ValidationError as exc:
        raise CliError(describe_settings_error(exc)) from None
    _remember_secrets(settings)
    problems = settings.limit_problems()
    if problems:  # refused before any command stores anything
        raise CliError(" ".join(problems))
    return settings


def open_repo(settings: Settings | None = None) -> Repository:
    settings = settings or load_settings()
    _make_data_dir(settings)
    return open_repository(settings)


def _make_data_dir(settings: Settings) -> None:
    folder = settings.data_dir
    if folder.exists() and not folder.is_dir():
        return  # runtime says so, naming ATELIER_DATA_DIR
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(
            f"Cannot create the data folder {folder}: {exc.strerror or exc}; "
            "point ATELIER_DATA_DIR at a folder you can write."
        ) from None


def open_existing_repo(settings: Settings | None = None) -> Repository | None:
    """For commands that only read: None (and nothing created) when there is no database yet."""
    return open_existing_repository(settings or load_settings())


def _no_image(image_id: int) -> CliError:
    return CliError(f"There is no image with id {image_id}.")


def _no_conversation(conversation_id: int) -> CliError:
    return CliError(f"There is no conversation {conversation_id}.")


def strict_json(document: Any, **options: Any) -> str:
    """JSON any parser takes: a NaN or infinity (from an old row, say) becomes null, never `NaN`."""
    return json.dumps(_finite(document), allow_nan=False, default=str, sort_keys=True, **options)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def print_json(document: Any) -> None:
    sys.stdout.write(strict_json(document, indent=2) + "\n")


def image_document(repo: Repository, image: Image) -> dict[str, Any]:
    document = row_as_dict(image)
    document["path"] = str(repo.image_path(image))
    document["mask_path"] = str(repo.files.path_for(image.mask_sha256)) if image.mask_sha256 else None
    return document


def _parse_id(value: str, what: str) -> int:
    try:
        number = int(value)
    except ValueError:
        hint = ""
        if what == "Image id" and value.strip().startswith("#"):
            hint = " The id is the number `atelier history` shows in its id column, not the #number."
        raise CliError(f"{what} must be a number, got {value!r}.{hint}") from None
    if number < 1:
        raise CliError(f"{what} must be a positive number, got {value!r}.")
    return number


def _image_id(value: str) -> int:
    number = _parse_id(value, "Image id")
    if number > MAX_ROW_ID:  # no row can have it (and SQLite could not even be asked)
        raise _no_image(number)
    return number


def _conversation_id(value: str) -> int:
    number = _parse_id(value, "Conversation id")
    if number > MAX_ROW_ID:
        raise _no_conversation(number)
    return number


@app.command()
def config(as_json: JsonFlag = False) -> None:
    """Print the effective settings (secrets masked)."""
    with user_errors():
        shown = load_settings().masked()
        if as_json:
            print_json(shown)
            return
        table = Table("setting", "value", title="Atelier settings")
        for key in sorted(shown):
            table.add_row(key, "" if shown[key] is None else escape(str(shown[key])))
        out.print(table)


@app.command()
def history(
    conversation: Annotated[str | None, typer.Option("-c", "--conversation", help="Conversation id.")] = None,
    search: Annotated[
        str | None,
        typer.Option("--search", "-s", help='Words (all); "fox OR wolf"; "-snow" to leave out; "#4".'),
    ] = None,
    limit: Annotated[str, typer.Option(help="At most this many images.")] = "50",
    as_json: JsonFlag = False,
) -> None:
    """List images, newest first, optionally of one conversation or matching a search."""
    with user_errors():
        conversation_id = None if conversation is None else _conversation_id(conversation)
        most = _parse_limit(limit)
        repo = open_existing_repo()  # None on a fresh machine: an empty history, nothing created
        if conversation_id is not None:
            if repo is None:
                raise _no_conversation(conversation_id)
            repo.get_conversation(conversation_id)
        filters = ImageFilter(conversation_id=conversation_id, query=search)
        images = [] if repo is None else repo.list_images(filters, limit=most)
        total = len(images) if repo is None or len(images) < most else repo.count_images(filters)
        if as_json:
            print_json(
                {
                    "conversation_id": conversation_id,
                    "search": search,
                    "total": total,
                    "images": [image_document(repo, image) for image in images] if repo else [],
                }
            )
            return
        if not images:
            out.print("No images yet." if not search else f"No images match {escape(repr(search))}.")
            return
        # "request" is what was asked (the instruction); `atelier show ID` has the full prompt
        table = Table("id", "conv", "#", "operation", "parent", "backend", "request", "created")
        if total > len(images):
            table.caption = f"showing the newest {len(images)} of {total}; --limit {total} shows all"
        assert repo is not None  # the images came from it
        numbers = {image.id: image.number for image in images}
        for parent_id in {i.parent_id for i in images if i.parent_id is not None} - numbers.keys():
            with contextlib.suppress(NotFound):  # a parent older than the page is still "#N"
                numbers[parent_id] = repo.get_image(parent_id).number
        for image in images:
            parent = "" if image.parent_id is None else f"#{numbers.get(image.parent_id, '?')}"
            table.add_row(
                str(image.id),
                str(image.conversation_id),
                f"#{image.number}",
                image.operation,
                parent,
                image.backend,
                escape(one_line(image.instruction or image.prompt)),  # prompts may contain [brackets]
                image.created_at.strftime("%Y-%m-%d %H:%M"),
            )
        out.print(table)


def _parse_limit(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise CliError(f"--limit must be a whole number, got {value!r}.") from None
    if number < 1:
        raise CliError(f"--limit must be at least 1, got {value}.")
    if number > MAX_ROW_ID:
        raise CliError(f"--limit must be at most {MAX_ROW_ID}, got {value}.")
    return number


#: printed whole below `show`'s table: paths and hashes are copied, so they are never cut
WHOLE_FIELDS = ("path", "sha256", "mask_path", "mask_sha256")


#: `atelier show -5`: a negative id reaches the id check ("must be a positive number")
#: instead of click's "No such option: -5"
_IDS_MAY_LOOK_LIKE_OPTIONS = {"ignore_unknown_options": True}


@app.command(context_settings=_IDS_MAY_LOOK_LIKE_OPTIONS)
def show(image_id: Annotated[str, typer.Argument(help="Image id.")], as_json: JsonFlag = False) -> None:
    """Everything recorded about one image, with its file path."""
    with user_errors():
        target = _image_id(image_id)
        repo = open_existing_repo()
        if repo is None:
            raise _no_image(target)
        image = repo.get_image(target)
        document = image_document(repo, image)
        if image.generation_id is not None:
            generation, inputs = repo.generation(image.generation_id)
            document["generation"] = row_as_dict(generation)
            document["generation"]["inputs"] = [{"image_id": i.image_id, "role": i.role} for i in inputs]
        else:
            document["generation"] = None
        if as_json:
            print_json(document)
            return
        table = Table(
            "field",
            "value",
            title=f"Image {image.id} (#{image.number} of conversation {image.conversation_id})",
        )
        for key in sorted(set(document) - set(WHOLE_FIELDS)):
            value = document[key]
            shown = strict_json(value) if isinstance(value, dict | list) else str(value)
            table.add_row(key, escape(shown))  # prompts may contain [brackets]
        out.print(table)
        # Plain lines, never wrapped or cut with "…" (a table would at 80 columns or in a file):
        # people copy these into other commands.
        width = max(len(key) for key in WHOLE_FIELDS)
        for key in WHOLE_FIELDS:
            if document[key] is not None:  # no mask: no mask lines
                sys.stdout.write(f"{key.ljust(width)}  {document[key]}\n")


@app.command(context_settings=_IDS_MAY_LOOK_LIKE_OPTIONS)
def lineage(image_id: Annotated[str, typer.Argument(help="Image id.")], as_json: JsonFlag = False) -> None:
    """The lineage tree an image belongs to, with the image marked."""
    with user_errors():
        target = _image_id(image_id)
        repo = open_existing_repo()
        if repo is None:
            raise _no_image(target)
        nodes = repo.lineage_tree(target)
        if as_json:
            print_json(
                {
                    "image_id": target,
                    "root_id": nodes[0].image.id,
                    "nodes": [
                        {
                            "id": node.image.id,
                            "number": node.image.number,
                            "conversation_id": node.image.conversation_id,
                            "parent_id": node.image.parent_id,
                            "depth": node.depth,
                            "operation": node.image.operation,
                            "instruction": node.image.instruction,
                            "prompt": node.image.prompt,
                            "is_target": node.image.id == target,
                        }
                        for node in nodes
                    ],
                }
            )
            return
        out.print(_lineage_tree(nodes, target))


def _lineage_tree(nodes: list[Any], target: int) -> Tree:
    def label(image: Image) -> str:
        marker = " [bold yellow]◀ this image[/bold yellow]" if image.id == target else ""
        words = escape(one_line(image.instruction or image.prompt, 50))
        return f"#{image.number} (id {image.id}) {image.operation}: {words}{marker}"

    root = nodes[0].image
    tree = Tree(label(root))
    branches: dict[int, Tree] = {root.id: tree}
    for node in nodes[1:]:
        parent = branches.get(node.image.parent_id or -1, tree)
        branches[node.image.id] = parent.add(label(node.image))
    return tree


@app.command("export")
def export_command(
    conversation_id: Annotated[str, typer.Argument(help="Conversation id.")],
    out_zip: Annotated[Path, typer.Argument(help="The zip file to write.")],
    force: Annotated[bool, typer.Option("--force", help="Replace OUT.zip if it exists.")] = False,
) -> None:
    """Export a conversation (images, messages, lineage) to a zip."""
    from storage.archive import export_conversation

    with user_errors():
        cid = _conversation_id(conversation_id)
        _check_zip_target(out_zip, cid)
        repo = open_existing_repo()
        if repo is None:
            raise _no_conversation(cid)
        count = export_conversation(repo, cid, out_zip, replace=force)
        out.print(f"Exported conversation {cid} with {count} files to {escape(str(out_zip))}")


def _check_zip_target(out_zip: Path, conversation_id: int) -> None:
    if out_zip.is_dir():
        suggestion = out_zip / f"conversation-{conversation_id}.zip"
        raise CliError(f"OUT.zip must be a file path; {out_zip} is a folder (try {suggestion}).")


@app.command("import")
def import_command(in_zip: Annotated[Path, typer.Argument(help="A zip made by `atelier export`.")]) -> None:
    """Import a conversation exported by `atelier export`."""
    from storage.archive import AlreadyImported, import_archive, read_archive

    with user_errors():
        archive = read_archive(in_zip)  # checked whole before the data dir is touched
        try:
            new_id = import_archive(open_repo(), archive)
        except AlreadyImported as already:  # not a failure: what the zip holds is here
            out.print(str(already), markup=False)
            return
        out.print(f"Imported as conversation {new_id}")


@app.command()
def doctor(
    as_json: JsonFlag = False,
    sweep: Annotated[
        bool,
        typer.Option(help="Remove temp and orphan files interrupted writes left; --no-sweep only looks."),
    ] = True,
) -> None:
    """Check that every row has its file with the right hash; say "nothing lost" or list what is.

    Leftovers of interrupted writes are swept (listed with --no-sweep); exit 1 only on a loss.
    """
    from storage.files import ImageFileStore, SweepReport
    from storage.repository import RecoveryReport

    with user_errors():
        settings = load_settings()
        recovered, swept = RecoveryReport(), SweepReport(temp_files_removed=0, orphan_files_removed=0)
        counts: dict[str, int] | None
        try:
            repo = open_existing_repository(settings, recover=False)  # report before any sweep
        except DatabaseDamaged as exc:  # too damaged to open: that is the finding, not an error
            files = ImageFileStore(settings.images_dir)
            temps = sorted(str(p) for p in files.temp_files())
            report = IntegrityReport(0, [], [], [], temps, files.pending_hashes(), [exc.detail])
            repo, counts = None, None
        else:
            if repo is None:  # nothing stored yet: nothing to check, and nothing is created
                if not as_json:
                    out.print(
                        f"Nothing stored yet in {escape(str(settings.data_dir))}: no database to check."
                    )
                report = IntegrityReport(0, [], [], [], [])
                counts = {"conversations": 0, "messages": 0, "images": 0, "generations": 0}
            else:
                database_errors = repo.database_errors()
                # Never sweep beside a damaged database: a file no readable row names may be the
                # only copy of an image whose row sits in a damaged page.
                if sweep and not database_errors:
                    recovered = repo.recover()
                    # Under SQLite's write lock no live writer is mid-write, so any age is safe.
                    swept = repo.sweep(grace_seconds=0 if repo.db.is_sqlite else 3600)
                report = repo.check_integrity(database_errors=database_errors)
                counts = _counts(repo)
        swept_temps = recovered.temp_files_removed + swept.temp_files_removed
        swept_orphans = recovered.orphan_files_removed + swept.orphan_files_removed
        advice = _doctor_advice(settings, report)
        document = {
            "ok": report.ok,
            "nothing_lost": report.nothing_lost,
            "problems": report.problems(),
            "images_checked": report.images_checked,
            "missing_files": report.missing_files,
            "hash_mismatches": report.hash_mismatches,
            "database_errors": report.database_errors,
            "orphan_files": report.orphan_files,
            "temp_files": report.temp_files,
            "unfinished_writes": report.unfinished_writes,
            "swept_temp_files": swept_temps,
            "swept_orphan_files": swept_orphans,
            "counts": counts,
            "advice": advice,
        }
        if as_json:
            print_json(document | {"database_exists": repo is not None or counts is None})
        elif repo is not None or counts is None:
            _print_doctor(report, swept_temps, swept_orphans)
            for line in advice:
                out.print(escape(line))
        if not report.nothing_lost:
            raise typer.Exit(1)


def _counts(repo: Repository) -> dict[str, int] | None:
    """Row counts, or None when the database is too damaged to count them."""
    try:
        return repo.counts()
    except DBAPIError:
        return None


def _doctor_advice(settings: Settings, report: IntegrityReport) -> list[str]:
    """What to do about a damaged database: the report alone leaves people stuck."""
    if not report.database_errors:
        return []
    from sqlalchemy.engine import make_url

    url = make_url(settings.effective_database_url)
    if url.get_backend_name() != "sqlite" or not url.database:
        return ["The database is damaged: restore it from your database's backup or an `atelier export` zip."]
    damaged = Path(url.database)
    recovered = damaged.with_name(f"{damaged.stem}-recovered{damaged.suffix}")
    return [
        "The database is damaged; nothing was swept, so no image file was removed.",
        f"First stop Atelier and copy {damaged} (and any -wal and -shm file beside it) somewhere safe.",
        f'To save what SQLite can: sqlite3 "{damaged}" ".recover" | sqlite3 "{recovered}" '
        '(if .recover fails, use ".dump"), then check the copy with '
        f'ATELIER_DATABASE_URL="sqlite:///{recovered}" atelier doctor --no-sweep before using it.',
        "Or restore from an export: `atelier import IN.zip` into a fresh ATELIER_DATA_DIR.",
    ]


def _print_doctor(report: IntegrityReport, swept_temps: int, swept_orphans: int) -> None:
    def plural(count: int, noun: str) -> str:
        return f"{count} {noun}" if count == 1 else f"{count} {noun}s"

    if swept_temps or swept_orphans:
        out.print(
            f"Swept {plural(swept_temps, 'temp file')} and {plural(swept_orphans, 'orphan image file')} "
            "left by interrupted writes."
        )
    if report.nothing_lost:
        out.print(
            f"[green]Nothing lost[/green]: {plural(report.images_checked, 'image')} checked; every row "
            "has its file and every file matches its hash."
        )
    else:
        out.print(f"[red]PROBLEMS FOUND[/red] ({plural(report.images_checked, 'image')} checked):")
        for line in report.problems():
            out.print(f"  {escape(line)}")
    markers_only = set(report.unfinished_writes) - set(report.orphan_files)  # not counted twice
    counted = [
        (len(report.temp_files), "temp file"),
        (len(report.orphan_files), "orphan image file"),
        (len(markers_only), "marker of an interrupted write"),
    ]
    leftovers = [plural(count, noun) for count, noun in counted if count]
    if leftovers:
        out.print(
            f"To sweep (left by an interrupted write, not a loss): {', '.join(leftovers)}. "
            "The next start of Atelier, or `atelier doctor` without --no-sweep, removes them."
        )
        for path in report.temp_files:
            out.print(f"  temp file {escape(path)}")
        for digest in report.orphan_files:
            out.print(f"  orphan file {digest}")


def build_assistant(settings: Settings | None = None) -> Any:
    from assistant.core import Assistant

    settings = settings or load_settings()
    return Assistant(settings, open_repo(settings))


def _read_upload(path: Path | None, kind: str) -> Any:
    from assistant.core import Attachment

    if path is None:
        return None
    if path.is_dir():
        raise CliError(f"The {kind} {path} is a folder; give the path of an image file.")
    if not path.exists():
        raise CliError(f"The {kind} file {path} does not exist.")
    if not path.is_file():
        raise CliError(f"The {kind} {path} is not a regular file; give the path of an image file.")
    return Attachment(data=path.read_bytes(), kind=kind, filename=path.name)


@app.command()
def chat(
    text: Annotated[str, typer.Argument(help="What you want, e.g. 'a cozy cabin at night'.")],
    conversation: Annotated[str | None, typer.Option("-c", "--conversation", help="Conversation id.")] = None,
    image: Annotated[Path | None, typer.Option("--image", help="An image to start from.")] = None,
    mask: Annotated[
        Path | None, typer.Option("--mask", help="A mask for inpainting (white = repaint).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per event per line.")] = False,
) -> None:
    """Run one chat turn (a new conversation unless -c is given) and print its events."""
    with user_errors():
        conversation_id = None if conversation is None else _conversation_id(conversation)
        attachments = [a for a in (_read_upload(image, "image"), _read_upload(mask, "mask")) if a is not None]
        settings = load_settings()
        if conversation_id is not None and not database_exists(settings):
            raise _no_conversation(conversation_id)
        assistant = build_assistant(settings)
        events = assistant.respond(conversation_id, text, attachments)
        failure = _show_events(
            events,
            _print_json_events if as_json else _render_events,
            on_ctrl_c=lambda: assistant.cancel_token.cancel(),
        )
        if failure is not None and not failure.cancelled and conversation_id is None:
            _drop_if_nothing_made(assistant.repo, failure.conversation_id)
        if failure is not None:
            raise typer.Exit(EXIT_CANCELLED if failure.cancelled else 1)


def _drop_if_nothing_made(repo: Repository, conversation_id: int) -> None:
    """A command that failed leaves nothing behind: the conversation it opened goes unless it
    holds an image (an upload is the user's own). The error line has already said why. A turn
    the user stopped (Ctrl-C) stays, recorded as cancelled, as in the UI."""
    with contextlib.suppress(StorageError):
        if not repo.conversation_images(conversation_id):
            repo.delete_conversation(conversation_id)


def _show_events(
    events: Iterator[Any], show: Callable[[Iterator[Any]], None], on_ctrl_c: Callable[[], None] | None = None
) -> Any:
    """Show the turn's events; a reader that goes away (`| head -1`) does not stop the turn.

    Abandoning the event stream would interrupt the turn before its images are stored, so
    after a broken pipe the rest is consumed silently and the turn finishes as if watched.
    A Ctrl-C that lands while an event is being printed (not while the backend runs, where the
    turn catches it itself) stops the turn the same way, through `on_ctrl_c`, and the events
    go on to its "Stopped" line; a second Ctrl-C quits at once.
    """
    failures: list[Any] = []
    finished = False

    def watched() -> Iterator[Any]:
        nonlocal finished
        for event in events:
            if event.kind == "error":
                failures.append(event)
            yield event
        finished = True

    stream = watched()
    stopping = False
    while True:
        try:
            show(stream)
            break
        except BrokenPipeError:
            _send_stdout_to_devnull()
            for _event in stream:
                pass
            break
        except KeyboardInterrupt:
            if on_ctrl_c is None or stopping:
                raise
            stopping = True
            on_ctrl_c()
    if stopping and not finished and not failures:  # the interrupt cut the stream itself
        raise typer.Exit(EXIT_CANCELLED)
    return failures[-1] if failures else None


def _send_stdout_to_devnull() -> None:
    """Later writes (and the interpreter's flush at exit) go nowhere instead of raising again."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _print_json_events(events: Iterator[Any]) -> None:
    for event in events:
        sys.stdout.write(strict_json(event.to_dict()) + "\n")
        sys.stdout.flush()


def _render_events(events: Iterator[Any]) -> None:
    """The same events the UI shows, for a terminal: plan, a progress bar, images, the reply."""
    from rich.progress import BarColumn, Progress, TaskID, TextColumn

    from assistant.events import Failed, ImageReady, PlanMade, Reply
    from assistant.events import Progress as StepProgress

    with Progress(
        TextColumn("rendering"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        console=err,
        transient=True,
    ) as bar:
        task: TaskID | None = None
        for event in events:
            if isinstance(event, StepProgress):
                if task is None:
                    task = bar.add_task("rendering", total=event.total)
                bar.update(task, completed=event.step, total=event.total)
                continue
            if isinstance(event, PlanMade):
                where = _escape(f"{event.backend}/{event.model}")
                out.print(
                    f"[dim]conversation {event.conversation_id} · {_escape(str(event.intent))} · "
                    f"{where} · planner {_escape(str(event.planner))}[/dim]"
                )
                prompts = event.params.get("prompts") or {}
                for number, prompt in prompts.items():
                    out.print(f"[dim]prompt for {_escape(number)}:[/dim] {_escape(prompt)}")
                if event.prompt and not prompts:
                    out.print(f"[dim]prompt:[/dim] {_escape(event.prompt)}")
            elif isinstance(event, ImageReady):
                path = _escape(str(event.path))
                out.print(f"[bold]#{event.number}[/bold] (id {event.id}, {event.operation}) → {path}")
            elif isinstance(event, Reply):
                out.print(_escape(event.text))
            elif isinstance(event, Failed):
                if event.cancelled:  # its message says so itself ("Cancelled: you stopped…")
                    err.print(f"[yellow]{_escape(event.message)}[/yellow]")
                else:
                    err.print(f"[red]Error:[/red] {_escape(event.message)}")


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _parse_seed(value: str | None) -> int | None:
    """--seed: 0 to MAX_SEED as given, -1 for a freshly drawn one; anything else is refused, not wrapped."""
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        raise CliError(f"--seed must be a whole number, got {value!r}.") from None
    if number == RANDOM_SEED:
        return secrets.randbelow(MAX_SEED + 1)
    if not 0 <= number <= MAX_SEED:
        raise CliError(f"--seed must be from 0 to {MAX_SEED} (or {RANDOM_SEED} for a new one), got {value}.")
    return number


@app.command()
def replay(
    image_id: Annotated[str, typer.Argument(help="Image id.")],
    from_root: Annotated[
        bool, typer.Option("--from-root", help="Re-run the whole chain from its root.")
    ] = False,
    seed: Annotated[
        str | None,
        typer.Option(
            help=f"Use this seed (with --from-root: for the root): 0 to {MAX_SEED}, or -1 for a new one."
        ),
    ] = None,
    backend: Annotated[str | None, typer.Option(help="Replay on another backend (with --from-root).")] = None,
    model: Annotated[str | None, typer.Option(help="Replay on another model (with --from-root).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Regenerate an image from its record and report whether the result is identical."""
    from assistant.settings import BackendChoice
    from tools.base import ToolError

    with user_errors():
        target = _image_id(image_id)
        settings = load_settings()
        updates: dict[str, Any] = {}
        if (seed is not None or backend or model) and not from_root:
            raise CliError("--seed, --backend and --model need --from-root (plain replay checks the record).")
        root_seed = _parse_seed(seed)
        if backend:
            try:
                updates["backend"] = BackendChoice(backend)
            except ValueError:
                raise CliError(f"Unknown backend {backend!r}; choose offline, openai or diffusers.") from None
        if model:
            chosen = updates.get("backend", settings.effective_backend)
            field_name = {"openai": "openai_image_model", "diffusers": "diffusers_model"}.get(str(chosen))
            if field_name is None:
                raise CliError(
                    "The offline backend has a single model; --model applies to openai or diffusers."
                )
            updates[field_name] = model
        if not database_exists(settings):
            raise _no_image(target)
        assistant = build_assistant(settings.model_copy(update=updates))
        try:
            if from_root:
                created = assistant.replay_chain(target, seed=root_seed)
                numbers = {
                    i.id: i.number for i in assistant.repo.conversation_images(created[0].conversation_id)
                }
                new_images = [
                    {
                        "id": i.id,
                        "number": i.number,
                        "parent_id": i.parent_id,
                        "operation": i.operation,
                        "seed": i.seed,
                        "path": str(assistant.repo.image_path(i)),
                        "replay_of": (i.params or {}).get("replay_of"),
                        "identical": bool((i.params or {}).get("replay_identical")),
                    }
                    for i in created
                ]
                if as_json:
                    print_json({"image_id": target, "new_images": new_images})
                    return
                for item in new_images:
                    of = numbers.get(item["replay_of"] or -1)
                    same = "identical to" if item["identical"] else "differs from"
                    if root_seed is not None:
                        same = "the new seed's version of"
                    versus = f" ({same} #{of})" if of is not None else ""
                    out.print(
                        f"#{item['number']} (id {item['id']}) {item['operation']} → {item['path']}{versus}"
                    )
                if root_seed is None:
                    alike = all(item["identical"] for item in new_images)
                    out.print(
                        "Every step came out identical to the original, pixel for pixel."
                        if alike
                        else "Not identical to the original chain: see the steps marked “differs”."
                    )
                return
            stored = assistant.repo.get_image(target)
            file_was_missing = not assistant.repo.image_path(stored).is_file()
            file_was_damaged = not file_was_missing and not assistant.repo.file_intact(stored)
            original, _pixels, identical = assistant.replay(target)
        except ToolError as exc:
            raise CliError(exc.user_message) from None
        restored = (file_was_missing or file_was_damaged) and identical
        if as_json:
            print_json(
                {
                    "image_id": original.id,
                    "identical": identical,
                    "backend": original.backend,
                    "sha256": original.sha256,
                    "file_was_missing": file_was_missing,
                    "file_was_damaged": file_was_damaged,
                    "restored": restored,
                }
            )
        else:
            transform = (original.params or {}).get("transform") or original.operation
            how = (
                f"with its {transform} transform"
                if original.backend == "transform"
                else f"on the {original.backend} backend"
            )
            verdict = (
                f"identical, pixel for pixel (sha256 {original.sha256[:16]}…)."
                if identical
                else f"the result DIFFERS from the stored image (recorded sha256 {original.sha256[:16]}…)."
            )
            if file_was_missing or file_was_damaged:
                state = "missing" if file_was_missing else "damaged"
                verdict = (
                    f"identical to the recorded hash; its file was {state} and is restored."
                    if identical
                    else f"its file is {state}, and the replay differs from the recorded hash, so it "
                    "cannot be restored (see `atelier doctor`)."
                )
            out.print(f"Replayed image {original.id} {how}: {verdict}")
        if not identical:
            raise typer.Exit(2)


def streamlit_flags(port: int, address: str) -> list[str]:
    """The Streamlit settings `atelier ui` runs with: an app for people, not a script being written.

    - Always headless: the non-headless mode asks for an e-mail address on the terminal at first
      start, which blocks a fresh install; `ui` opens the browser itself.
    - No file watcher: on any change to a source file (a `git pull` while the app runs) Streamlit
      re-imports every project module, and the cached assistant, built from the old classes, then
      meets new ones (an upscale failed with "'NewImage' object has no attribute 'inputs'").
    - No "Deploy" button or developer menu, and no usage statistics.
    """
    return [
        "--server.port",
        str(port),
        "--server.address",
        address,
        "--server.headless",
        "true",
        "--server.fileWatcherType",
        "none",
        "--server.runOnSave",
        "false",
        "--browser.gatherUsageStats",
        "false",
        "--client.toolbarMode",
        "minimal",
    ]


@app.command()
def ui(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8501,
    address: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    headless: Annotated[bool, typer.Option(help="Don't open a browser.")] = False,
) -> None:
    """Start the Streamlit app (and open it in a browser unless --headless)."""
    import subprocess

    import streamlit_app

    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        streamlit_app.__file__,
        *streamlit_flags(port, address),
    ]
    host = "127.0.0.1" if address in ("0.0.0.0", "::", "") else address
    url = f"http://{host}:{port}"
    out.print(f"Atelier is starting at {url}")
    server = subprocess.Popen(command)
    if not headless:
        _open_browser_when_up(url, server)
    try:
        raise typer.Exit(server.wait())
    except KeyboardInterrupt:
        server.terminate()
        raise typer.Exit(server.wait()) from None


def _open_browser_when_up(url: str, server: Any) -> None:
    import threading
    import time
    import urllib.request
    import webbrowser

    def wait_and_open() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2):
                    webbrowser.open(url)
                    return
            except OSError:
                time.sleep(0.5)

    threading.Thread(target=wait_and_open, daemon=True).start()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
