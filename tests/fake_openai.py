"""A fake OpenAI HTTP server that speaks the real wire format, for tests.

The OpenAI SDK sends through `httpx2`, which respx and pytest-httpx do not intercept, and a
mock of the SDK would not exercise what matters (multipart encoding, status handling,
retries, headers). So tests point the real SDK at this server on 127.0.0.1 instead.

How it is meant to be used:

    with FakeOpenAI() as server:
        server.enqueue(GENERATIONS, error_response(429, "Slow down", headers={"retry-after": "7"}))
        backend = OpenAIImagesBackend(api_key="sk-test", model="gpt-image-2", base_url=server.base_url)
        ...
        request = server.requests[0]          # what the SDK actually sent
        request.json["size"], request.files_named("image[]"), request.response  # what it got back

Each route has a default handler that answers like the real service; a per-route queue of
`CannedResponse`s (or handler callables) overrides it one request at a time, so a test scripts
exactly the sequence it needs (500 then 200, a 429 with Retry-After, a slow answer, …).

Extending it (for example for the LLM agent's `/v1/chat/completions`): write a `Handler`
(RecordedRequest → CannedResponse), register it in `FakeOpenAI._default_routes` or at run time with
`server.route("POST", "/v1/...", handler)`, and add builders like `chat_completion()` below.
A minimal chat-completions route (JSON and SSE, scripted tool calls) is already here.
"""

from __future__ import annotations

import base64
import contextlib
import email.parser
import email.policy
import hashlib
import io
import json
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

from PIL import Image

GENERATIONS = "/v1/images/generations"
EDITS = "/v1/images/edits"
CHAT_COMPLETIONS = "/v1/chat/completions"


# --------------------------------------------------------------------------- wire records


@dataclass(frozen=True)
class FilePart:
    """One file part of a multipart body, as the server saw it."""

    name: str
    filename: str | None
    content_type: str
    data: bytes

    def image(self) -> Image.Image:
        img = Image.open(io.BytesIO(self.data))
        img.load()
        return img


@dataclass
class CannedResponse:
    """One scripted answer.

    `body`: bytes/str are sent verbatim (for malformed bodies); anything else is JSON-encoded.
    `sse_events`: when set, the answer is a `text/event-stream`: each event is JSON-encoded unless
    it is already a str, written and flushed one by one, then `data: [DONE]` unless `sse_done` is False.
    `delay`: seconds to wait before answering (to trigger client timeouts); `stop()` cuts it short.
    """

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    sse_events: Sequence[Any] | None = None
    sse_done: bool = True

    def encoded_body(self) -> bytes:
        if self.body is None:
            return b""
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, str):
            return self.body.encode()
        return json.dumps(self.body).encode()

    def json(self) -> Any:
        """The body as JSON (for tests that compare what was sent with what the client decoded)."""
        return json.loads(self.encoded_body())


@dataclass
class RecordedRequest:
    """What a client sent; `response` is what the server answered (set once it has)."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names
    body: bytes
    json: Any = None
    form: dict[str, list[str]] = field(default_factory=dict)
    files: list[FilePart] = field(default_factory=list)
    response: CannedResponse | None = None

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def field(self, name: str) -> str | None:
        """The first multipart text field called `name`."""
        values = self.form.get(name)
        return values[0] if values else None

    def files_named(self, name: str) -> list[FilePart]:
        return [part for part in self.files if part.name == name]

    def chat_messages(self) -> list[dict[str, Any]]:
        """The `messages` of a chat-completions request ([] for any other request)."""
        body = self.json if isinstance(self.json, dict) else {}
        messages = body.get("messages")
        return [dict(m) for m in messages] if isinstance(messages, list) else []

    def tool_results(self) -> dict[str, str]:
        """tool_call_id → content of every `tool` message the client sent back."""
        return {
            str(m.get("tool_call_id")): str(m.get("content") or "")
            for m in self.chat_messages()
            if m.get("role") == "tool"
        }


Handler = Callable[[RecordedRequest], CannedResponse]
Scripted = CannedResponse | Handler


# --------------------------------------------------------------------------- response builders


def png_bytes(
    width: int, height: int, color: tuple[int, int, int] = (200, 40, 40), fmt: str = "PNG"
) -> bytes:
    """A real, decodable image; a left-to-right ramp so tests can tell images apart pixel-wise."""
    img = Image.new("RGB", (width, height), color)
    ramp = Image.linear_gradient("L").rotate(90).point(lambda v: v // 4)
    img.paste((255, 255, 255), mask=ramp.resize((width, height), Image.Resampling.NEAREST))
    out = io.BytesIO()
    img.save(out, format=fmt, **({"compress_level": 1} if fmt == "PNG" else {}))
    return out.getvalue()


def usage_block(
    *, text_in: int = 12, image_in: int = 0, image_out: int = 1056, text_out: int = 0
) -> dict[str, Any]:
    """The `usage` object of an Images API response (token counts of GPT image models)."""
    return {
        "input_tokens": text_in + image_in,
        "input_tokens_details": {"text_tokens": text_in, "image_tokens": image_in},
        "output_tokens": image_out + text_out,
        "output_tokens_details": {"image_tokens": image_out, "text_tokens": text_out},
        "total_tokens": text_in + image_in + image_out + text_out,
    }


def images_response(
    images: Sequence[bytes],
    *,
    revised_prompts: Sequence[str | None] | None = None,
    usage: Mapping[str, Any] | None = None,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> CannedResponse:
    """An `ImagesResponse`: {created, data: [{b64_json, revised_prompt?}], usage, …extra}."""
    data: list[dict[str, Any]] = []
    for i, raw in enumerate(images):
        item: dict[str, Any] = {"b64_json": base64.b64encode(raw).decode()}
        if revised_prompts is not None and revised_prompts[i] is not None:
            item["revised_prompt"] = revised_prompts[i]
        data.append(item)
    body: dict[str, Any] = {"created": int(time.time()), "data": data}
    body["usage"] = dict(usage) if usage is not None else usage_block(image_out=1056 * len(images))
    body.update(extra)
    return CannedResponse(status=status, body=body, headers=dict(headers or {}))


def error_response(
    status: int,
    message: str,
    *,
    type: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> CannedResponse:
    """An error in OpenAI's format: {"error": {"message", "type", "param", "code"}}."""
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return CannedResponse(status=status, body=body, headers=dict(headers or {}))


def tool_call(name: str, arguments: Mapping[str, Any] | str, call_id: str | None = None) -> dict[str, Any]:
    """One entry of `message.tool_calls` (arguments are a JSON string on the wire)."""
    args = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {
        "id": call_id or f"call_{uuid.uuid4().hex[:12]}",
        "type": "function",
        "function": {"name": name, "arguments": args},
    }


def chat_completion(
    content: str | None = None,
    *,
    tool_calls: Sequence[Mapping[str, Any]] = (),
    model: str = "fake-chat-model",
    usage: Mapping[str, Any] | None = None,
) -> CannedResponse:
    """A non-streaming `chat.completion` answer with optional tool calls."""
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    if tool_calls:
        message["tool_calls"] = [dict(call) for call in tool_calls]
    body = {
        "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": "tool_calls" if tool_calls else "stop",
                "logprobs": None,
            }
        ],
        "usage": dict(usage or {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}),
    }
    return CannedResponse(body=body)


def relay_tool_results(prefix: str = "") -> Handler:
    """A chat handler that answers with the tool results it was just sent, word for word.

    It plays a model that passes on what its tools said, so what the user reads comes from the
    client's tool results (the system under test), never from the test's script.
    """

    def answer(request: RecordedRequest) -> CannedResponse:
        messages = request.chat_messages()
        last_assistant = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=-1)
        results = [
            str(m.get("content") or "") for m in messages[last_assistant + 1 :] if m.get("role") == "tool"
        ]
        return chat_completion((prefix + " ".join(results)).strip() or None)

    return answer


def chat_completion_stream(
    content_chunks: Sequence[str] = (),
    *,
    tool_calls: Sequence[Mapping[str, Any]] = (),
    model: str = "fake-chat-model",
) -> CannedResponse:
    """A streaming (SSE) `chat.completion.chunk` sequence: role, content deltas, tool calls, finish."""
    chunk_id = f"chatcmpl-{uuid.uuid4().hex[:12]}"
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": chunk_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        }

    events: list[Any] = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": text}) for text in content_chunks]
    for index, call in enumerate(tool_calls):
        function = call["function"]
        head = {"index": index, "id": call["id"], "type": "function"}
        events.append(
            chunk({"tool_calls": [{**head, "function": {"name": function["name"], "arguments": ""}}]})
        )
        events.append(
            chunk({"tool_calls": [{"index": index, "function": {"arguments": function["arguments"]}}]})
        )
    events.append(chunk({}, "tool_calls" if tool_calls else "stop"))
    return CannedResponse(sse_events=events)


# --------------------------------------------------------------------------- default handlers


def _parse_size(size: Any, fallback: tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, str) and "x" in size:
        w, _, h = size.partition("x")
        if w.isdigit() and h.isdigit():
            return int(w), int(h)
    return fallback


def _color_for(seed: str) -> tuple[int, int, int]:
    digest = hashlib.sha256(seed.encode()).digest()
    return digest[0], digest[1], digest[2]


def _answer_images(prompt: str, n: int, size: tuple[int, int], output_format: str) -> CannedResponse:
    fmt = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}.get(output_format, "PNG")
    images = [png_bytes(*size, color=_color_for(f"{prompt}#{i}"), fmt=fmt) for i in range(n)]
    return images_response(
        images,
        usage=usage_block(text_in=max(1, len(prompt.split())), image_out=1056 * n),
        size=f"{size[0]}x{size[1]}",
        output_format=output_format,
        quality="medium",
        background="opaque",
    )


def default_generations(request: RecordedRequest) -> CannedResponse:
    body = request.json if isinstance(request.json, dict) else {}
    n = int(body.get("n") or 1)
    size = _parse_size(body.get("size"), (1024, 1024))
    return _answer_images(str(body.get("prompt", "")), n, size, str(body.get("output_format") or "png"))


def default_edits(request: RecordedRequest) -> CannedResponse:
    sources = request.files_named("image") + request.files_named("image[]")
    if not sources:
        return error_response(400, "Missing required parameter: 'image'.", param="image")
    first = sources[0].image().size
    n = int(request.field("n") or 1)
    size = _parse_size(request.field("size"), first)
    return _answer_images(request.field("prompt") or "", n, size, request.field("output_format") or "png")


def default_chat_completions(request: RecordedRequest) -> CannedResponse:
    body = request.json if isinstance(request.json, dict) else {}
    if body.get("stream"):
        return chat_completion_stream(["o", "k"], model=str(body.get("model", "fake-chat-model")))
    return chat_completion("ok", model=str(body.get("model", "fake-chat-model")))


# --------------------------------------------------------------------------- the server


def _parse_multipart(content_type: str, body: bytes) -> tuple[dict[str, list[str]], list[FilePart]]:
    """Split multipart/form-data with the stdlib `email` parser (no extra dependency)."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode() + body
    )
    form: dict[str, list[str]] = {}
    files: list[FilePart] = []
    if not message.is_multipart():
        return form, files
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        filename = part.get_filename()
        if filename is None:
            form.setdefault(name, []).append(data.decode("utf-8"))
        else:
            files.append(FilePart(name, filename, part.get_content_type(), data))
    return form, files


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: FakeOpenAI


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: tests inspect `requests` instead of reading stderr."""

    def _handle(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        split = urlsplit(self.path)
        headers = {name.lower(): value for name, value in self.headers.items()}
        request = RecordedRequest(
            method=self.command, path=split.path, query=parse_qs(split.query), headers=headers, body=body
        )
        content_type = headers.get("content-type", "")
        if content_type.startswith("application/json") and body:
            try:
                request.json = json.loads(body)
            except ValueError:
                request.json = None
        elif content_type.startswith("multipart/form-data"):
            request.form, request.files = _parse_multipart(content_type, body)
        response = self.server.owner._dispatch(request)
        if response.delay and self.server.owner._stopping.wait(response.delay):
            return
        # A client that gave up (its timeout) is exactly what a delay test wants.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self._send(response)

    def _send(self, response: CannedResponse) -> None:
        self.send_response(response.status)
        names = {name.lower() for name in response.headers}
        for name, value in response.headers.items():
            self.send_header(name, value)
        if "x-request-id" not in names:
            self.send_header("x-request-id", f"req_fake_{uuid.uuid4().hex[:10]}")
        if response.sse_events is not None:
            if "content-type" not in names:
                self.send_header("content-type", "text/event-stream")
            self.send_header("connection", "close")
            self.close_connection = True
            self.end_headers()
            events = [e if isinstance(e, str) else json.dumps(e) for e in response.sse_events]
            if response.sse_done:
                events.append("[DONE]")
            for event in events:
                self.wfile.write(f"data: {event}\n\n".encode())
                self.wfile.flush()
            return
        payload = response.encoded_body()
        if "content-type" not in names:
            self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class FakeOpenAI:
    """A threaded HTTP server on 127.0.0.1 (port 0 = any free port) with a request log and scripts."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._host = host
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._requests: list[RecordedRequest] = []
        self._queues: dict[tuple[str, str], deque[Scripted]] = {}
        self._routes: dict[tuple[str, str], Handler] = self._default_routes()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @staticmethod
    def _default_routes() -> dict[tuple[str, str], Handler]:
        return {
            ("POST", GENERATIONS): default_generations,
            ("POST", EDITS): default_edits,
            ("POST", CHAT_COMPLETIONS): default_chat_completions,
        }

    # lifecycle ------------------------------------------------------------
    def start(self) -> Self:
        server = _Server((self._host, 0), _RequestHandler)
        server.owner = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-openai", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FakeOpenAI is not running; use it as a context manager or call start()")
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        """What to pass as the SDK's `base_url` (it ends in /v1, like the real one)."""
        return f"http://{self._host}:{self.port}/v1"

    # scripting ------------------------------------------------------------
    def route(self, method: str, path: str, handler: Handler) -> None:
        """Add or replace the default handler of a route (used when its queue is empty)."""
        with self._lock:
            self._routes[(method.upper(), path)] = handler

    def enqueue(self, path: str, *responses: Scripted, method: str = "POST") -> None:
        """Answer the next requests to `path` with these, in order; then the default handler again."""
        with self._lock:
            self._queues.setdefault((method.upper(), path), deque()).extend(responses)

    def pending(self, path: str, method: str = "POST") -> int:
        """How many scripted answers are still unused (a test can assert they were all consumed)."""
        with self._lock:
            return len(self._queues.get((method.upper(), path), ()))

    def reset(self) -> None:
        with self._lock:
            self._requests.clear()
            self._queues.clear()
            self._routes = self._default_routes()

    # the log --------------------------------------------------------------
    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def requests_to(self, path: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == path]

    def _dispatch(self, request: RecordedRequest) -> CannedResponse:
        key = (request.method, request.path)
        with self._lock:
            self._requests.append(request)
            queue = self._queues.get(key)
            scripted: Scripted | None = queue.popleft() if queue else None
            handler = self._routes.get(key)
        if scripted is None:
            if handler is None:
                scripted = error_response(
                    404, f"Unknown request URL: {request.method} {request.path}.", code="unknown_url"
                )
            else:
                scripted = handler
        if isinstance(scripted, CannedResponse):
            response = scripted
        else:
            try:
                response = scripted(request)
            except Exception as err:  # a broken test handler should fail loudly, not hang the client
                response = error_response(500, f"fake handler raised {err!r}", type="fake_server_error")
        request.response = response
        return response


def serve_fake_openai() -> Iterator[FakeOpenAI]:
    """Generator body for a pytest fixture: `fake_openai = pytest.fixture(serve_fake_openai)`."""
    with FakeOpenAI() as server:
        yield server
