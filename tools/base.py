"""The one interface every image backend speaks.

Backends receive an `ImageRequest`, return an `ImageResult` of PIL images plus the
metadata needed to record and replay them, and never touch the database. Anything
that goes wrong becomes a `ToolError` subclass whose `user_message` is safe to show
(no secrets, no stack traces); the assistant is the one place that renders it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from PIL import Image as PILImage


class Operation(StrEnum):
    """What produced an image; the same names are stored in `images.operation`."""

    GENERATE = "generate"
    EDIT = "edit"
    INPAINT = "inpaint"
    VARIATION = "variation"
    IMG2IMG = "img2img"
    UPSCALE = "upscale"
    TRANSFORM = "transform"
    UPLOAD = "upload"


#: Operations a model backend may declare; upscale/transform/upload are model-free.
BACKEND_OPERATIONS: frozenset[Operation] = frozenset(
    {Operation.GENERATE, Operation.EDIT, Operation.INPAINT, Operation.VARIATION, Operation.IMG2IMG}
)

ProgressCallback = Callable[[int, int], None]


class CancelToken:
    """A flag checked between steps, so a long run can stop without killing the process."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`, waking at once on cancel; True when cancelled.

        A backend waiting between retries (a Retry-After of a minute) uses this, so Stop works
        during the wait too and not only after it.
        """
        return self._event.wait(max(0.0, seconds))


@dataclass(frozen=True)
class ImageRequest:
    """Everything a backend needs for one call; sources are already validated RGB(A) images."""

    operation: Operation
    prompt: str
    negative_prompt: str = ""
    width: int = 512
    height: int = 512
    n: int = 1
    seed: int | None = None
    steps: int | None = None
    guidance: float | None = None
    strength: float | None = None
    sources: tuple[PILImage.Image, ...] = ()
    mask: PILImage.Image | None = None
    #: backend-specific knobs: quality, background, output_format, scheduler, style …
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GeneratedImage:
    image: PILImage.Image
    #: the seed that reproduces exactly this image (None when the backend has no seeds)
    seed: int | None
    #: what the provider says it actually rendered, when it rewrites prompts itself
    revised_prompt: str | None = None


@dataclass(frozen=True)
class ImageResult:
    images: list[GeneratedImage]
    backend: str
    model: str
    #: effective parameters as used (steps, guidance, sampler, strength, size, quality …)
    params: dict[str, Any] = field(default_factory=dict)
    #: things the user should know, e.g. "size rounded to 512x512"
    notes: list[str] = field(default_factory=list)
    #: provider usage block (tokens), when there is one
    usage: dict[str, Any] | None = None
    cost_usd: float | None = None


@runtime_checkable
class ImageBackend(Protocol):
    """A model that makes or changes images.

    `capabilities` lets the planner choose an operation the backend can do, or explain why not,
    before any work starts.
    """

    name: str
    model: str
    capabilities: frozenset[Operation]

    def estimate_cost(self, request: ImageRequest) -> float | None:
        """The most `request` may cost in US dollars, known before it is sent; None when unknown.

        A per-conversation budget is enforced before the call, so it needs a price up front.
        """
        ...

    def run(
        self,
        request: ImageRequest,
        progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
    ) -> ImageResult: ...


class ToolError(Exception):
    """Base of every error a tool raises on purpose; `user_message` is shown as is."""

    def __init__(self, user_message: str) -> None:
        super().__init__(user_message)
        self.user_message = user_message


class UnsupportedOperation(ToolError):
    def __init__(self, backend: str, operation: Operation, supported: frozenset[Operation]) -> None:
        can = ", ".join(sorted(op.value for op in supported)) or "nothing"
        super().__init__(f"The {backend} backend cannot {operation.value}; it can: {can}.")
        self.backend = backend
        self.operation = operation
        self.supported = supported


class InvalidRequest(ToolError):
    """Parameters the backend cannot accept (checked before any network or GPU work)."""


class InvalidImage(ToolError):
    """An input image or mask that is not usable: not an image, too large, wrong size …"""


class Cancelled(ToolError):
    """The user stopped a run; it is recorded as cancelled, not as an error of the backend."""

    def __init__(self, finished: ImageResult | None = None) -> None:
        super().__init__("Cancelled: you stopped this request before it finished, so no image was made.")
        #: the images of a batch finished before the stop (a backend that draws them one by one);
        #: kept, as A1111's Interrupt keeps them, instead of thrown away with the rest
        self.finished = finished if finished is not None and finished.images else None


class AuthenticationFailed(ToolError):
    pass


class RateLimited(ToolError):
    def __init__(self, user_message: str, retry_after: float | None = None) -> None:
        super().__init__(user_message)
        self.retry_after = retry_after


class BackendTimeout(ToolError):
    pass


class BackendUnreachable(ToolError):
    pass


class ContentPolicyViolation(ToolError):
    def __init__(self, user_message: str, reason: str | None = None) -> None:
        super().__init__(user_message)
        self.reason = reason


class BackendServerError(ToolError):
    pass


class OutOfMemory(ToolError):
    pass


class ModelNotFound(ToolError):
    """A model folder or id that cannot be loaded (missing, incomplete)."""


def check_capability(backend: ImageBackend, operation: Operation) -> None:
    """Raise `UnsupportedOperation` up front instead of failing half way through."""
    if operation not in backend.capabilities:
        raise UnsupportedOperation(backend.name, operation, backend.capabilities)


def derive_seeds(seed: int, n: int) -> list[int]:
    """Seed i of a batch is seed+i, as in AUTOMATIC1111, so each image replays on its own."""
    return [(seed + i) % 2**32 for i in range(n)]
