"""Backends failing in every way they do in practice, met through `Assistant.respond`.

Each row: one good turn first (so there is something to lose), then the fault, then the
checks of `tests.reliability.helpers` (a clear line for the user; the turn stored as failed with
its reason and, where a backend was called, a failed `generations` row; nothing earlier lost;
the next turn works). The adapters' own error translation is tested in `tests/tools`; what is
added here is the whole path: event → message row → generation row → next turn.

* OpenAI images: the real SDK against the loopback fake server (`max_retries=0`, a dummy key).
  The offline rules plan these turns: with a key set and no chat endpoint, `auto` would send
  planning to api.openai.com.
* diffusers: the tiny random-weight pipeline, faults injected at the torch level (a forward
  pre-hook on the loaded UNet), not by replacing the adapter.
* the chat model: the LLM agent against the fake server's chat route, offline image backend.
"""

from __future__ import annotations

import shutil
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from assistant.agent import LLMAgent
from assistant.core import Assistant
from assistant.events import Event, Failed, PlanMade, Progress
from assistant.offline_planner import OfflinePlanner
from assistant.runtime import open_repository
from assistant.settings import BackendChoice, ChatFailureMode, Settings
from tests.fake_openai import (
    CHAT_COMPLETIONS,
    EDITS,
    GENERATIONS,
    CannedResponse,
    FakeOpenAI,
    chat_completion,
    error_response,
    tool_call,
    usage_block,
)
from tests.reliability.helpers import (
    assert_clear_message,
    assert_failed_turn,
    assert_nothing_lost,
    assert_usable,
    failed,
    images_made,
    new_generations,
    new_messages,
    progress_steps,
    replied,
    snapshot,
    turn,
)

DUMMY_KEY = "sk-test-dummy-faults-0000"


def closed_port_url() -> str:
    """A loopback URL nothing listens on: connecting is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


# =============================================================================================
# OpenAI images


def openai_assistant(data_dir: Path, base_url: str, **overrides: Any) -> Assistant:
    options: dict[str, Any] = {
        "backend": BackendChoice.OPENAI,
        "openai_base_url": base_url,
        "openai_api_key": SecretStr(DUMMY_KEY),
        "openai_max_retries": 0,
        "openai_timeout": 5.0,
        "width": 256,
        "height": 256,
    }
    settings = Settings(data_dir=data_dir, **{**options, **overrides})
    return Assistant(settings, open_repository(settings), planner=OfflinePlanner())


@dataclass(frozen=True)
class OpenAIFault:
    id: str
    #: the user's words for the turn that meets the fault ("make it …" edits #1 via images.edit)
    text: str
    #: the route that answers badly; None: the base URL points where nothing listens
    path: str | None
    response: CannedResponse | None
    fragments: tuple[str, ...]
    overrides: dict[str, Any] = field(default_factory=dict)


OPENAI_FAULTS = [
    OpenAIFault(
        "rate-limited-429",
        "a lighthouse at dawn",
        GENERATIONS,
        error_response(
            429,
            "Rate limit reached for gpt-image-2 on images per minute",
            type="requests",
            code="rate_limit_exceeded",
            headers={"retry-after": "7"},
        ),
        ("OpenAI's rate limit was reached (429)", "Try again in 7 seconds."),
    ),
    OpenAIFault(
        "server-error-500",
        "make it snowier",
        EDITS,
        error_response(500, "The server had an error while processing your request.", type="server_error"),
        ("server error (500)", "Try again in a moment."),
    ),
    OpenAIFault(
        "server-error-503",
        "a lighthouse at dawn",
        GENERATIONS,
        error_response(503, "Service temporarily unavailable", type="server_error"),
        ("server error (503)", "unavailable.", "Try again in a moment."),
    ),
    OpenAIFault(
        "timeout",
        "a lighthouse at dawn",
        GENERATIONS,
        CannedResponse(body={"created": 1, "data": []}, delay=3.0),
        ("did not answer within 0.3 s", "Try again"),
        {"openai_timeout": 0.3},
    ),
    OpenAIFault(
        "connection-refused",
        "a lighthouse at dawn",
        None,
        None,
        ("Cannot reach the image service at 127.0.0.1:", "Check the network"),
    ),
    OpenAIFault(
        "content-policy",
        "make it snowier",
        EDITS,
        error_response(
            400,
            "Your request was rejected by the safety system: the image may contain graphic violence.",
            code="moderation_blocked",
        ),
        ("declined this request under its content policy", "graphic violence", "Rephrase"),
    ),
    OpenAIFault(
        "invalid-key-401",
        "a lighthouse at dawn",
        GENERATIONS,
        error_response(
            401,
            f"Incorrect API key provided: {DUMMY_KEY[:8]}****0000.",
            type="invalid_request_error",
            code="invalid_api_key",
        ),
        ("OpenAI rejected the API key (401)", "Check OPENAI_API_KEY."),
    ),
    OpenAIFault(
        "missing-data",
        "a lighthouse at dawn",
        GENERATIONS,
        CannedResponse(body={"created": 1, "usage": usage_block()}),
        ("malformed response", "no image data"),
    ),
    OpenAIFault(
        "broken-base64",
        "make it snowier",
        EDITS,
        CannedResponse(body={"created": 1, "data": [{"b64_json": "@@not base64@@"}]}),
        ("malformed response", "not valid base64"),
    ),
]


@pytest.mark.parametrize("case", OPENAI_FAULTS, ids=[c.id for c in OPENAI_FAULTS])
def test_openai_fault_is_one_clear_message_and_a_failed_generation(
    tmp_path: Path, server: FakeOpenAI, case: OpenAIFault
) -> None:
    data = tmp_path / "data"
    assistant = openai_assistant(data, server.base_url)
    first = turn(assistant, None, "a lighthouse on a cliff")
    conversation_id = first[0].conversation_id
    (source,) = assistant.repo.conversation_images(conversation_id)
    repo = assistant.repo
    before = snapshot(repo)
    sent_before = len(server.requests)

    # the same data dir; another base URL (a service that is down) or timeout where the row says so,
    # so the turns before and after run with settings no loaded machine can trip over
    faulty = assistant
    if case.path is None:
        faulty = openai_assistant(data, closed_port_url(), **case.overrides)
    else:
        assert case.response is not None
        server.enqueue(case.path, case.response)
        if case.overrides:
            faulty = openai_assistant(data, server.base_url, **case.overrides)
    events = turn(faulty, conversation_id, case.text)

    message = failed(events).message
    assert_clear_message(message, *case.fragments)
    assert "sk-test" not in message
    assert isinstance(events[0], PlanMade) and events[0].backend == "openai"
    assert_failed_turn(repo, before, conversation_id, case.text, message, generation="failed")
    (generation,) = new_generations(repo, before, conversation_id)
    assert generation.backend == "openai" and generation.model == "gpt-image-2"
    _, inputs = repo.generation(generation.id)
    is_edit = case.text.startswith("make it")
    assert [(i.image_id, i.role) for i in inputs] == ([(source.id, "init")] if is_edit else [])
    assert_nothing_lost(before, repo, conversations_touched={conversation_id})
    # exactly one request met the fault (max_retries=0); none when nothing listens
    sent = server.requests[sent_before:]
    assert [r.path for r in sent] == ([case.path] if case.path else [])

    assert_usable(assistant, conversation_id)


# =============================================================================================
# diffusers: faults injected into the torch modules of the real (tiny) pipeline


def diffusers_assistant(data_dir: Path, model: Path) -> Assistant:
    settings = Settings(
        data_dir=data_dir,
        backend=BackendChoice.DIFFUSERS,
        diffusers_model=str(model),
        width=64,
        height=64,
        steps=4,
        style=None,
    )
    return Assistant(settings, open_repository(settings))


@contextmanager
def unet_hook(assistant: Assistant, hook: Callable[[int], None]) -> Iterator[None]:
    """Run `hook(n)` before the UNet's n-th forward pass (one per denoising step), then remove it."""
    unet: Any = assistant.backend.load().unet  # type: ignore[attr-defined]
    calls = 0

    def pre_hook(_module: Any, _args: Any) -> None:
        nonlocal calls
        calls += 1
        hook(calls)

    handle = unet.register_forward_pre_hook(pre_hook)
    try:
        yield
    finally:
        handle.remove()


@dataclass
class DiffusersFault:
    id: str
    #: (assistant, model folder) → context manager that injects the fault around the turn
    inject: Callable[[Assistant, Path], Any]
    fragments: tuple[str, ...]
    #: status of the turn's generation row
    generation: str
    #: called with each event of the faulty turn (to cancel from the progress stream)
    on_event: Callable[[Assistant, Event], None] | None = None
    #: undo what the fault did outside the process (a deleted folder), before the next turn
    repair: Callable[[Path, Path], None] | None = None


def _torch() -> Any:
    import torch

    return torch


def _oom_from_step_two(make_error: Callable[[], BaseException]) -> Callable[[Assistant, Path], Any]:
    """Every UNet call from the second step on runs out of memory (so the adapter's retry does too)."""

    def inject(assistant: Assistant, _model: Path) -> Any:
        def hook(call: int) -> None:
            if call >= 2:
                raise make_error()

        return unet_hook(assistant, hook)

    return inject


_CANCEL_GATE = threading.Event()


def _hold_step_two(assistant: Assistant, _model: Path) -> Any:
    """Step 2 waits until the renderer has cancelled, so the cancel lands mid-run every time."""
    _CANCEL_GATE.clear()

    def hook(call: int) -> None:
        if call == 2:
            assert _CANCEL_GATE.wait(30), "the renderer never cancelled"

    return unet_hook(assistant, hook)


def _cancel_after_first_step(assistant: Assistant, event: Event) -> None:
    if isinstance(event, Progress) and event.step == 1:
        assistant.cancel_token.cancel()  # what the UI does when the user presses stop
        _CANCEL_GATE.set()


@contextmanager
def _remove_folder(_assistant: Assistant, model: Path) -> Iterator[None]:
    from tools import diffusers_local

    shutil.rmtree(model)
    diffusers_local.clear_cache()  # as after a restart: the weights must be read from disk again
    yield


def _restore_folder(model: Path, master: Path) -> None:
    shutil.copytree(master, model)


DIFFUSERS_FAULTS = [
    DiffusersFault(
        "cuda-out-of-memory-error-mid-run",
        _oom_from_step_two(
            lambda: _torch().cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        ),
        ("Not enough GPU memory for 64×64", "CPU offload"),
        "failed",
    ),
    DiffusersFault(
        "runtime-error-cuda-out-of-memory-mid-run",
        _oom_from_step_two(lambda: RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")),
        ("Not enough GPU memory for 64×64", "CPU offload"),
        "failed",
    ),
    DiffusersFault(
        "cancel-mid-run",
        _hold_step_two,
        ("Cancelled", "no image was made"),
        "cancelled",
        on_event=_cancel_after_first_step,
    ),
    DiffusersFault(
        "model-folder-removed-between-turns",
        _remove_folder,
        ("Model folder", "does not exist"),
        "failed",
        repair=_restore_folder,
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize("case", DIFFUSERS_FAULTS, ids=[c.id for c in DIFFUSERS_FAULTS])
def test_diffusers_fault_is_one_clear_message_and_a_failed_generation(
    tmp_path: Path, tiny_model: Path, tiny_model_master: Path, case: DiffusersFault
) -> None:
    assistant = diffusers_assistant(tmp_path / "data", tiny_model)
    first = turn(assistant, None, "a red fox in the snow")
    conversation_id = first[0].conversation_id
    assert [e.number for e in images_made(first)] == [1]
    repo = assistant.repo
    before = snapshot(repo)

    text = "a blue bird on a branch"
    events: list[Event] = []
    with case.inject(assistant, tiny_model):
        for event in assistant.respond(conversation_id, text):
            events.append(event)
            if case.on_event is not None:
                case.on_event(assistant, event)

    message = failed(events).message
    assert_clear_message(message, *case.fragments)
    stopped = case.generation == "cancelled"
    assert failed(events).cancelled is stopped
    assert_failed_turn(
        repo,
        before,
        conversation_id,
        text,
        message,
        generation=case.generation,
        status="cancelled" if stopped else "failed",
    )
    assert_nothing_lost(before, repo, conversations_touched={conversation_id})
    if case.id == "cancel-mid-run":  # stopped between steps: step 2 of 4 was the last one run
        assert progress_steps(events) == [(1, 4), (2, 4)]

    if case.repair is not None:
        case.repair(tiny_model, tiny_model_master)
    assert_usable(assistant, conversation_id)


@pytest.mark.slow
def test_diffusers_out_of_memory_once_is_retried_frugally_with_a_note(
    tmp_path: Path, tiny_model: Path
) -> None:
    """A transient OOM (one step) costs a slower retry, not the turn: the image comes, with a note."""
    assistant = diffusers_assistant(tmp_path / "data", tiny_model)
    conversation_id = turn(assistant, None, "a red fox in the snow")[0].conversation_id
    before = snapshot(assistant.repo)

    def once(call: int) -> None:
        if call == 2:
            raise _torch().cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")

    with unet_hook(assistant, once):
        events = turn(assistant, conversation_id, "a blue bird on a branch")
    reply = replied(events).text
    assert [e.number for e in images_made(events)] == [2]
    assert "Ran out of GPU memory; made the images one at a time" in reply
    (generation,) = new_generations(assistant.repo, before, conversation_id)
    assert generation.status == "ok" and generation.params["low_memory"] is True
    assert_nothing_lost(before, assistant.repo, conversations_touched={conversation_id})
    assert_usable(assistant, conversation_id)


# =============================================================================================
# the chat model (LLM agent) misbehaving


def agent_assistant(data_dir: Path, base_url: str, **overrides: Any) -> Assistant:
    settings = Settings(
        data_dir=data_dir,
        backend=BackendChoice.OFFLINE,
        width=64,
        height=64,
        steps=2,
        chat_base_url=base_url,
        chat_model="fake-chat-model",
        chat_api_key=SecretStr(DUMMY_KEY),
        **{"chat_timeout": 10.0, **overrides},
    )
    agent = LLMAgent(settings, max_retries=0)
    return Assistant(settings, open_repository(settings), planner=agent, planner_name=agent.name)


@dataclass(frozen=True)
class ChatFault:
    id: str
    #: scripted chat answers, in order (a callable route answers every request the same way)
    answers: tuple[CannedResponse, ...] = ()
    route: Callable[[Any], CannedResponse] | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    #: "reply": the turn ends in a Reply that contains these; "failed": in a Failed event
    outcome: str = "reply"
    fragments: tuple[str, ...] = ()
    #: images the turn makes (the tool-call loop makes one per call until the cap)
    images: int = 0
    #: the stored tool call results start with this
    tool_result: str | None = None


CHAT_FAULTS = [
    ChatFault(
        "answers-text-instead-of-calling-tools",
        answers=(chat_completion("I cannot call tools, but I can describe a fox for you."),),
        fragments=("I cannot call tools, but I can describe a fox for you.",),
    ),
    ChatFault(
        "server-refuses-tools-then-falls-back",  # Ollama's answer for a model without tool support
        answers=(error_response(400, "registry.ollama.ai/library/gemma:2b does not support tools"),),
        fragments=(
            "does not support tool calling",
            "ATELIER_CHAT_MODEL",
            "used the offline planner for this turn.",
        ),
        images=1,
    ),
    ChatFault(
        "server-refuses-tools-with-fallback-off",  # vLLM's answer without --enable-auto-tool-choice
        answers=(
            error_response(
                400,
                '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set',
            ),
        ),
        overrides={"chat_on_failure": ChatFailureMode.FAIL},
        outcome="failed",
        fragments=("does not support tool calling", "ATELIER_CHAT_MODEL"),
    ),
    ChatFault(
        "calls-an-unknown-tool",
        answers=(
            chat_completion(None, tool_calls=[tool_call("delete_all_images", {}, "call_x")]),
            chat_completion("Sorry, I could not do that."),
        ),
        outcome="failed",
        fragments=("Sorry, I could not do that.", "Note: Unknown tool 'delete_all_images'."),
        tool_result="Error: Unknown tool 'delete_all_images'.",
    ),
    ChatFault(
        "sends-invalid-tool-arguments",
        answers=(
            chat_completion(None, tool_calls=[tool_call("generate_image", {"prompt": "", "n": "lots"}, "c")]),
            chat_completion("Sorry, that call was malformed."),
        ),
        outcome="failed",
        fragments=("Sorry, that call was malformed.", "Note: Invalid arguments for generate_image: prompt"),
        tool_result="Error: Invalid arguments for generate_image: prompt: String should have at least 1",
    ),
    ChatFault(
        "sends-arguments-that-are-not-json",
        answers=(
            chat_completion(None, tool_calls=[tool_call("generate_image", "{not json", "c")]),
            chat_completion("Sorry, that call was malformed."),
        ),
        outcome="failed",
        fragments=("Sorry, that call was malformed.",),
        tool_result="Error: Invalid arguments for generate_image: expected a JSON object",
    ),
    ChatFault(
        "loops-on-tool-calls",
        route=lambda _request: chat_completion(
            None, tool_calls=[tool_call("generate_image", {"prompt": "a red fox"})]
        ),
        overrides={"chat_max_tool_calls": 2},
        outcome="failed",
        fragments=(
            "I stopped after 2 tool calls in one turn (the limit is 2). "
            "Created #1 (new image, generate). Created #2 (new image, generate).",
        ),
        images=2,
    ),
    ChatFault(
        "times-out-then-falls-back-to-the-offline-planner",
        answers=(CannedResponse(body=chat_completion("late").body, delay=2.0),),
        overrides={"chat_timeout": 0.3},
        fragments=("could not be reached (timed out after 0.3 s); used the offline planner for this turn.",),
        images=1,
    ),
    ChatFault(
        "times-out-with-fallback-off",
        answers=(CannedResponse(body=chat_completion("late").body, delay=2.0),),
        overrides={"chat_on_failure": ChatFailureMode.FAIL, "chat_timeout": 0.3},
        outcome="failed",
        fragments=("could not be reached (timed out after 0.3 s)", "ATELIER_CHAT_ON_FAILURE=fallback"),
    ),
]


@pytest.mark.parametrize("case", CHAT_FAULTS, ids=[c.id for c in CHAT_FAULTS])
def test_chat_model_fault_ends_the_turn_cleanly_and_on_record(
    tmp_path: Path, server: FakeOpenAI, case: ChatFault
) -> None:
    assistant = agent_assistant(tmp_path / "data", server.base_url, **case.overrides)
    repo = assistant.repo
    conversation_id = repo.create_conversation("agent faults").id
    before = snapshot(repo)
    if case.route is not None:
        server.route("POST", CHAT_COMPLETIONS, case.route)
    server.enqueue(CHAT_COMPLETIONS, *case.answers)
    text = "a red fox in the snow"
    events = turn(assistant, conversation_id, text)

    assert len(images_made(events)) == case.images
    stored = new_messages(repo, before, conversation_id)
    assert stored[0].role == "user" and stored[0].content == text
    if case.outcome == "failed":
        stop = events[-1]
        assert isinstance(stop, Failed), events
        message = stop.message
        assert_clear_message(message, *case.fragments)
        assert DUMMY_KEY not in message
        if case.images:  # images made before the loop was stopped stay, with their own replies
            closing = stored[-1]
            assert (closing.role, closing.status, closing.content) == ("assistant", "failed", message)
            assert closing.plan is not None and closing.plan["error"] == message
            assert [g.status for g in new_generations(repo, before, conversation_id)] == ["ok"] * case.images
        else:
            assert_failed_turn(repo, before, conversation_id, text, message, generation=None)
    else:
        reply = replied(events).text
        for fragment in case.fragments:
            assert fragment in reply, reply
        assert "Traceback" not in reply and DUMMY_KEY not in reply
        closing = stored[-1]
        assert (closing.role, closing.status, closing.content) == ("assistant", "ok", reply)
        assert all(m.status == "ok" for m in stored)
        generations = new_generations(repo, before, conversation_id)
        assert [g.status for g in generations] == ["ok"] * case.images
    if case.tool_result is not None:
        plan = stored[-1].plan
        assert plan is not None
        (call,) = plan["tool_calls"]
        assert call["result"].startswith(case.tool_result), call["result"]
    assert_nothing_lost(before, repo, conversations_touched={conversation_id})

    server.reset()  # the model behaves again: the conversation goes on
    server.enqueue(
        CHAT_COMPLETIONS,
        chat_completion(None, tool_calls=[tool_call("generate_image", {"prompt": "a small red boat"})]),
        chat_completion("Here is your boat."),
    )
    short_timeout = "chat_timeout" in case.overrides  # the next turn must not race a 0.3 s timeout
    assert_usable(
        agent_assistant(tmp_path / "data", server.base_url) if short_timeout else assistant, conversation_id
    )
