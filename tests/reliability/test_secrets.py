"""The API key goes to the server in the Authorization header, and nowhere else. Ever.

Configured the way a user configures it (environment variables, read by `Settings()`), with
the LLM agent and the OpenAI images backend both pointed at the loopback fake server, the test
runs good and failing turns in-process and through the CLI, with a server that is as hostile
as it gets: it echoes the key in error bodies (401, 500), in a revised prompt and in the chat
model's words and tool arguments. Then it searches everything Atelier wrote or said:

* the database file and its -wal/-shm files, every PNG (raw bytes and decoded text chunks);
* the export zip (raw bytes, each member, the PNGs inside);
* every log record at DEBUG from every logger (root, openai, httpx, langchain, …);
* stdout and stderr of `atelier config`, `doctor`, `export`, `history`, `chat`;
* every event as JSON and every message shown to the user.

It also checks that the key did reach the server on every request, so the search cannot pass
by the key never having been used.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from PIL import Image as PILImage

from assistant.core import Assistant
from assistant.events import Event, Failed, Reply
from assistant.runtime import open_repository
from assistant.settings import ChatFailureMode, Settings
from tests.fake_openai import (
    CHAT_COMPLETIONS,
    GENERATIONS,
    FakeOpenAI,
    chat_completion,
    error_response,
    images_response,
    png_bytes,
    tool_call,
)

SENTINEL = "sk-test-SENTINEL-RELIABILITY-4242"
#: also caught when a key is cut or re-wrapped ("sk-test-" stripped, "****-4242" masked …)
FRAGMENTS = (SENTINEL, "SENTINEL-RELIABILITY", SENTINEL.encode().hex())
ROOT = Path(__file__).resolve().parents[2]
LOGGERS = (
    "",
    "openai",
    "httpx",
    "httpx2",
    "httpcore",
    "httpcore2",
    "langchain",
    "langchain_core",
    "langchain_openai",
    "assistant",
    "tools",
    "storage",
)


def leaks_in(label: str, data: bytes | str) -> list[str]:
    text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
    raw = data if isinstance(data, bytes) else data.encode("utf-8", errors="replace")
    found = [f for f in FRAGMENTS if f in text]
    found += [f"utf-16:{f}" for f in FRAGMENTS[:1] if f.encode("utf-16-le") in raw]
    return [f"{label}: {fragment}" for fragment in found]


def png_text_leaks(label: str, data: bytes) -> list[str]:
    """PNG text chunks may be compressed (zTXt/iTXt): read them decoded as well."""
    with PILImage.open(io.BytesIO(data)) as image:
        chunks = {**image.info, **getattr(image, "text", {})}
    return leaks_in(f"{label} text chunks", json.dumps(chunks, default=str))


def configure_environment(
    monkeypatch: pytest.MonkeyPatch, data_dir: Path, server: FakeOpenAI
) -> dict[str, str]:
    """The user's setup: keys and endpoints in the environment, nothing else."""
    for name in list(os.environ):
        if name.startswith(("ATELIER_", "OPENAI_")):
            monkeypatch.delenv(name)
    values = {
        "OPENAI_API_KEY": SENTINEL,
        "ATELIER_CHAT_API_KEY": SENTINEL,
        "ATELIER_DATA_DIR": str(data_dir),
        "ATELIER_BACKEND": "openai",
        "ATELIER_OPENAI_BASE_URL": server.base_url,
        "ATELIER_OPENAI_MAX_RETRIES": "0",
        "ATELIER_CHAT_BASE_URL": server.base_url,
        "ATELIER_CHAT_MODEL": "fake-chat-model",
        "ATELIER_CHAT_TIMEOUT": "5",
        "ATELIER_WIDTH": "256",
        "ATELIER_HEIGHT": "256",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return {**os.environ, **values}


def generate(prompt: str, call_id: str) -> dict[str, object]:
    return tool_call("generate_image", {"prompt": prompt}, call_id)


def script_turns(server: FakeOpenAI) -> None:
    """Five turns' worth of answers, in order; each one echoes the key somewhere."""
    echo = f"Incorrect API key provided: {SENTINEL}. You can find your API key at platform.openai.com."
    server.enqueue(
        CHAT_COMPLETIONS,
        # 1: the model puts the key into a prompt and its answer; the image service into a revised prompt
        chat_completion(None, tool_calls=[generate(f"a fox holding a sign that says {SENTINEL}", "c1")]),
        chat_completion(f"Done! By the way, your key is {SENTINEL}."),
        # 2: the image service rejects the key and quotes it
        chat_completion(None, tool_calls=[generate("a second fox", "c2")]),
        chat_completion("Sorry, that did not work."),
        # 3: the image service crashes and quotes it
        chat_completion(None, tool_calls=[generate("a third fox", "c3")]),
        chat_completion("Sorry, that did not work either."),
        # 4: the chat endpoint rejects the key and quotes it → offline planner for this turn
        error_response(401, echo, type="invalid_request_error", code="invalid_api_key"),
        # 5: the chat endpoint crashes and quotes it (the agent retries once) → a failed turn
        error_response(500, f"internal error while handling {SENTINEL}", type="server_error"),
        error_response(500, f"internal error while handling {SENTINEL}", type="server_error"),
    )
    server.enqueue(
        GENERATIONS,
        images_response([png_bytes(256, 256)], revised_prompts=[f"a fox with a sign reading {SENTINEL}"]),
        error_response(401, echo, type="invalid_request_error", code="invalid_api_key"),
        error_response(500, f"upstream failure for key {SENTINEL}", type="server_error"),
    )


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "assistant.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_the_key_reaches_the_server_and_nowhere_else(
    tmp_path: Path, server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for name in LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)
    data_dir = tmp_path / "data"
    env = configure_environment(monkeypatch, data_dir, server)
    settings = Settings()  # from the environment, as the app and the CLI build it
    assert settings.openai_api_key is not None and settings.effective_chat_model == "fake-chat-model"
    assistant = Assistant(settings, open_repository(settings))  # planner: the LLM agent, built by the app

    script_turns(server)
    events: list[Event] = []
    conversation_id: int | None = None
    for text in ("a fox with a sign", "another fox", "a third fox", "one more fox"):
        events += assistant.respond(conversation_id, text)
        conversation_id = events[0].conversation_id
    assistant.settings.chat_on_failure = ChatFailureMode.FAIL
    events += assistant.respond(conversation_id, "a last fox")
    assert conversation_id is not None
    assert isinstance(events[-1], Failed)
    assert len(assistant.repo.conversation_images(conversation_id)) == 2  # turns 1 and 4
    assert [g.status for g in assistant.repo.generations(conversation_id)] == ["ok", "failed", "failed", "ok"]

    # the CLI, in processes of its own, against the same data and server
    export_zip = tmp_path / "export.zip"
    server.enqueue(
        CHAT_COMPLETIONS,
        chat_completion(None, tool_calls=[generate("a cat", "c9")]),
        chat_completion(f"That failed; your key {SENTINEL} was refused."),
    )
    server.enqueue(
        GENERATIONS, error_response(401, f"Incorrect API key provided: {SENTINEL}.", code="invalid_api_key")
    )
    runs = {
        "config": run_cli(env, "config"),
        "config --json": run_cli(env, "config", "--json"),
        "chat --json": run_cli(env, "chat", "--json", "-c", str(conversation_id), "a cat"),
        "history --json": run_cli(env, "history", "--json"),
        "export": run_cli(env, "export", str(conversation_id), str(export_zip)),
        "doctor --json": run_cli(env, "doctor", "--json"),
    }
    assert runs["config"].returncode == 0 and "****4242" in runs["config"].stdout  # masked, not absent
    assert runs["export"].returncode == 0 and export_zip.is_file()
    assert json.loads(runs["doctor --json"].stdout)["ok"] is True
    chat_events = [json.loads(line) for line in runs["chat --json"].stdout.splitlines()]
    assert chat_events and chat_events[-1]["event"] == "error"  # the one tool call failed
    assert runs["chat --json"].returncode != 0

    # the key did reach the server, on every request of every kind, from process and CLI alike
    requests = server.requests
    assert {r.path for r in requests} >= {CHAT_COMPLETIONS, GENERATIONS}
    assert len(server.requests_to(CHAT_COMPLETIONS)) >= 10 and len(server.requests_to(GENERATIONS)) >= 4
    assert all(r.header("authorization") == f"Bearer {SENTINEL}" for r in requests)
    assert server.pending(CHAT_COMPLETIONS) == 0 and server.pending(GENERATIONS) == 0

    leaks: list[str] = []
    written = sorted(p for p in data_dir.rglob("*") if p.is_file())
    assert {p.name for p in written} >= {"atelier.db"} and any(p.suffix == ".png" for p in written)
    for path in written:
        data = path.read_bytes()
        leaks += leaks_in(str(path.relative_to(tmp_path)), data)
        if path.suffix == ".png":
            leaks += png_text_leaks(str(path.relative_to(tmp_path)), data)
    for sidecar in ("atelier.db-wal", "atelier.db-shm"):
        if (data_dir / sidecar).exists():
            leaks += leaks_in(sidecar, (data_dir / sidecar).read_bytes())
    leaks += leaks_in("export.zip", export_zip.read_bytes())
    with zipfile.ZipFile(export_zip) as archive:
        for member in archive.namelist():
            content = archive.read(member)
            leaks += leaks_in(f"export.zip:{member}", content)
            if member.endswith(".png"):
                leaks += png_text_leaks(f"export.zip:{member}", content)
    for record in caplog.records:
        text = f"{record.name} {record.getMessage()} {record.args!r} {record.exc_text or ''}"
        leaks += leaks_in(f"log {record.name}", text)
    leaks += leaks_in("caplog.text", caplog.text)
    for label, run in runs.items():
        leaks += leaks_in(f"atelier {label} stdout", run.stdout)
        leaks += leaks_in(f"atelier {label} stderr", run.stderr)
    for event in events:
        leaks += leaks_in(f"event {event.kind}", json.dumps(event.to_dict(), default=str))
    shown = [e.message for e in events if isinstance(e, Failed)] + [
        e.text for e in events if isinstance(e, Reply)
    ]
    for message in shown:
        leaks += leaks_in("message shown to the user", message)
    for row in assistant.repo.messages(conversation_id):
        leaks += leaks_in("stored message", row.content + json.dumps(row.plan, default=str))
    leaks += leaks_in("repr(settings)", repr(settings) + str(settings.masked()))
    assert not leaks, leaks

    # and the failures were still explained: the 401 and the 500 are on record, keyless
    errors = [g.error or "" for g in assistant.repo.generations(conversation_id) if g.status == "failed"]
    assert any("rejected the API key (401)" in e for e in errors)
    assert any("server error (500)" in e for e in errors)
    assert "[redacted]" in (assistant.repo.conversation_images(conversation_id)[0].revised_prompt or "")


@pytest.mark.parametrize("chat_key", [None, "ollama-own-key-0000"])
def test_the_openai_key_is_never_sent_to_another_chat_server(
    tmp_path: Path, server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch, chat_key: str | None
) -> None:
    """OPENAI_API_KEY set for images, the chat agent pointed at someone else's server (Ollama,
    vLLM, any URL): the agent talks to that server without the OpenAI key; with a chat key of
    its own, it sends that one."""
    for name in list(os.environ):
        if name.startswith(("ATELIER_", "OPENAI_")):
            monkeypatch.delenv(name)
    env = {
        "OPENAI_API_KEY": SENTINEL,
        "ATELIER_DATA_DIR": str(tmp_path / "data"),
        "ATELIER_BACKEND": "offline",
        "ATELIER_CHAT_BASE_URL": server.base_url,  # 127.0.0.1: not OpenAI
        "ATELIER_CHAT_MODEL": "fake-chat-model",
        "ATELIER_WIDTH": "64",
        "ATELIER_HEIGHT": "64",
        **({"ATELIER_CHAT_API_KEY": chat_key} if chat_key else {}),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assistant = Assistant(settings, open_repository(settings))
    server.enqueue(
        CHAT_COMPLETIONS,
        chat_completion(None, tool_calls=[generate("a fox in the snow", "k1")]),
        chat_completion("Here is your fox."),
    )
    events = list(assistant.respond(None, "a fox in the snow"))
    assert isinstance(events[-1], Reply), events[-1]
    assert "Here is your fox." in events[-1].text  # the agent did plan the turn over HTTP

    requests = server.requests_to(CHAT_COMPLETIONS)
    assert len(requests) == 2
    for request in requests:
        sent = json.dumps(request.headers) + request.body.decode("utf-8", errors="replace")
        assert not leaks_in("request to the chat server", sent)
        allowed = {f"Bearer {chat_key}"} if chat_key else {None, "Bearer no-key"}  # the SDK's placeholder
        assert request.header("authorization") in allowed
    assistant.repo.db.dispose()
