"""The OpenAI Images API as an Atelier backend (`images.generate` and `images.edit`).

Read top to bottom: the model table (what each current GPT image model accepts, from the
installed SDK's own documentation), the up-front checks that turn a request into one SDK call,
the call, then decoding and the error translation.

Operations: generate → `images.generate`; edit, img2img, variation and inpaint → `images.edit`
(the variations endpoint is retired, so a variation is an edit with a variation instruction;
inpaint is an edit with a mask). Only GPT image models are supported: DALL·E 2/3 and gpt-image-1
are retired in the SDK and are refused before any call.

Inputs: sources and mask go through `tools.image_input` first, as on every backend (loaded,
within the pixel limit, RGB(A); a mask of the same shape but another size is fitted with a note,
one of another shape or an empty one is refused), all before any network work. Masks are read as
everywhere (white, or opaque strokes on a transparent layer, = repaint; see
`tools.image_input.mask_channel`) and converted to OpenAI's convention, where fully transparent
pixels are repainted.

Time bound: one `run` is given `total_timeout` seconds (default 300) for all its attempts and
the waits between them, so a server that keeps answering 429 or 500 with Retry-After cannot hold a
user for (max_retries + 1) × (timeout + 120 s). The SDK's client is built with max_retries=0 and
this module runs the retry loop itself, because the SDK's loop has no overall deadline and its
sleep cannot be cut short. The loop keeps the SDK's rules: timeouts, connection errors,
408/409/429 and 5xx are retried up to `max_retries` times (an exhausted quota is not: waiting does
not add credit), waiting 0.5 s·2^k (≤ 8 s, minus up to 25 % jitter) or the server's Retry-After
when it is ≤ 120 s (a longer one is not retried). Each attempt waits at most min(`timeout`, time
left) for the server (connect capped at 10 s); a retry whose wait would leave less than 1 s before
the deadline is not made, and the user gets the last error plus "gave up after N tries in T s".
Cancel is honoured during the waits. Worst case ≈ `total_timeout`; only a server that trickles
its answer byte by byte can stretch the last attempt, since HTTP timeouts bound each read, not a
whole response.

Secrets: the API key never appears in an error message or log line: server messages are scrubbed
of the key and anything that looks like `sk-…`, and SDK exceptions are not chained (their request
objects carry the Authorization header).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import email.utils
import functools
import io
import logging
import math
import random
import re
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final
from urllib.parse import urlsplit

import httpx2
import openai
from openai.types import ImagesResponse
from PIL import Image as PILImage

from tools.base import (
    AuthenticationFailed,
    BackendServerError,
    BackendTimeout,
    BackendUnreachable,
    Cancelled,
    CancelToken,
    ContentPolicyViolation,
    GeneratedImage,
    ImageRequest,
    ImageResult,
    InvalidImage,
    InvalidRequest,
    ModelNotFound,
    Operation,
    ProgressCallback,
    RateLimited,
    ToolError,
    check_capability,
)
from tools.image_input import check_sources, mask_channel, prepare_mask

log = logging.getLogger(__name__)

DEFAULT_BASE_URL: Final = "https://api.openai.com/v1"

STANDARD_SIZES: Final = ("1024x1024", "1536x1024", "1024x1536")
BASE_QUALITIES: Final = ("low", "medium", "high", "auto")
EXTENDED_QUALITIES: Final = (*BASE_QUALITIES, "xhigh", "max")
BACKGROUNDS: Final = ("transparent", "opaque", "auto")
#: Still raster formats Atelier can store; the API's gif and svg outputs are not images PIL can keep.
OUTPUT_FORMATS: Final = ("png", "webp", "jpeg")
MODERATION_LEVELS: Final = ("low", "auto")
COMPLEXITIES: Final = ("low", "medium", "high")
FIDELITIES: Final = ("high", "low")
MAX_N: Final = 10
MAX_PROMPT_CHARS: Final = 32_000
MAX_INPUT_IMAGES: Final = 16
MAX_INPUT_BYTES: Final = 50 * 1024 * 1024
MAX_MASK_BYTES: Final = 4 * 1024 * 1024
#: Flexible-size models: multiples of 16, aspect within 1:3…3:1, at most 3840 px a side and 3840×2160 px.
SIZE_MULTIPLE: Final = 16
MAX_EDGE: Final = 3840
MAX_PIXELS: Final = 3840 * 2160
EXPERIMENTAL_PIXELS: Final = 2560 * 1440

VARIATION_INSTRUCTION: Final = (
    "Create a variation of this image: keep its subject, composition and style, but vary the details."
)

#: The most one `run` may take, all attempts and retry waits included (see the module docstring).
DEFAULT_TOTAL_TIMEOUT: Final = 300.0
#: The SDK's own retry timing (openai/_constants.py), kept so retries behave as users of the SDK expect.
INITIAL_RETRY_DELAY: Final = 0.5
MAX_RETRY_DELAY: Final = 8.0
MAX_RETRY_AFTER: Final = 120.0
#: A retry is not started with less time than this left before the deadline: it could only time out.
MIN_ATTEMPT_SECONDS: Final = 1.0
_RETRIED_STATUSES: Final = frozenset({408, 409, 429})

#: Knobs the GPT image models do not have; mentioned in the result notes when a request sets them.
_IGNORED_KNOBS: Final = ("seed", "steps", "guidance", "strength")


@dataclass(frozen=True)
class TokenPrices:
    """Estimated US dollars per 1M tokens: text input, image input, image output.

    These are estimates copied from public price lists (they change; the bill is the truth). Output
    text tokens are rare and are priced at the image output rate, so the estimate errs high.
    """

    text_input: float
    image_input: float
    image_output: float


@dataclass(frozen=True)
class ModelSpec:
    """What one model accepts. Where the SDK documentation is silent, the check is permissive and
    the server has the last word (its 400 becomes an `InvalidRequest` with its message)."""

    qualities: tuple[str, ...] = BASE_QUALITIES
    #: arbitrary WIDTHxHEIGHT within the limits above, besides the standard sizes and auto
    flexible_sizes: bool = False
    #: allowed `input_fidelity` values; None means the model takes none and it must be omitted
    input_fidelity: tuple[str, ...] | None = FIDELITIES
    prices: TokenPrices | None = None
    #: a caveat added to the result notes when a transparent background is requested
    transparent_note: str | None = None


# Prices (USD per 1M tokens, estimates as of the SDK's release): OpenAI's model pages for
# gpt-image-1-mini and gpt-image-1.5 (chatgpt-image-latest points at the same tier), public price
# lists for gpt-image-2. None published for 2.5/2.6 yet: their cost_usd stays None, not a guess.
_MINI = ModelSpec(input_fidelity=("low",), prices=TokenPrices(2.00, 2.50, 8.00))
_V1_5 = ModelSpec(prices=TokenPrices(5.00, 8.00, 32.00))
_V2 = ModelSpec(
    flexible_sizes=True,
    input_fidelity=None,
    prices=TokenPrices(5.00, 8.00, 30.00),
    transparent_note="Transparent backgrounds are a preview feature on gpt-image-2.",
)
_V2_5 = ModelSpec(qualities=EXTENDED_QUALITIES, flexible_sizes=True)
_V2_6 = ModelSpec()

#: The current GPT image models of the installed SDK (openai/types/image_model.py).
MODELS: Final[Mapping[str, ModelSpec]] = {
    "gpt-image-1-mini": _MINI,
    "gpt-image-1.5": _V1_5,
    "chatgpt-image-latest": _V1_5,
    "gpt-image-2": _V2,
    "gpt-image-2-2026-04-21": _V2,
    "gpt-image-2.5-sunburst": _V2_5,
    "gpt-image-2.5-sunburst-2026-09-08": _V2_5,
    "gpt-image-2.5-flare": _V2_5,
    "gpt-image-2.5-flare-2026-09-08": _V2_5,
    "gpt-image-2.6-sunburst": _V2_6,
    "gpt-image-2.6-flare": _V2_6,
}

RETIRED_MODELS: Final[Mapping[str, str]] = {
    "gpt-image-1": "was shut down on 2026-10-23; use gpt-image-2.5-sunburst or gpt-image-2.5-flare",
    "dall-e-2": "was retired on 2026-05-12; use a GPT image model such as gpt-image-2",
    "dall-e-3": "was retired on 2026-05-12; use a GPT image model such as gpt-image-2",
}

#: Models outside the table (an OpenAI-compatible server's own names): checked loosely.
_UNKNOWN = ModelSpec(qualities=EXTENDED_QUALITIES, flexible_sizes=True)


def supported_models() -> list[str]:
    return list(MODELS)


def allowed_sizes_text(model: str) -> str:
    """The allowed sizes in words, for error messages and the planner."""
    spec = MODELS.get(model, _UNKNOWN)
    fixed = ", ".join((*STANDARD_SIZES, "auto"))
    if not spec.flexible_sizes:
        return fixed
    return (
        f"{fixed}, or any WIDTHxHEIGHT with both sides multiples of {SIZE_MULTIPLE}, an aspect ratio "
        f"between 1:3 and 3:1, at most {MAX_EDGE} px a side and {MAX_PIXELS:,} pixels"
    )


# --------------------------------------------------------------------------- secrets

_SECRET_PATTERN = re.compile(r"(?:(?<![A-Za-z0-9])sk-[A-Za-z0-9_\-*.]{3,}|Bearer\s+\S+)")


def scrub(text: str, secret: str | None = None) -> str:
    """Remove the key (and anything shaped like one) from text that may reach a user or a log."""
    if secret:
        text = text.replace(secret, "[redacted]")
    return _SECRET_PATTERN.sub("[redacted]", text)


# --------------------------------------------------------------------------- checks → one call


@dataclass
class PreparedCall:
    """One SDK call, fully checked: `endpoint` is "generate" or "edit"."""

    endpoint: str
    prompt: str
    #: keyword arguments for the SDK method besides model, prompt, image and mask
    api_params: dict[str, Any]
    images: list[tuple[str, bytes, str]] = field(default_factory=list)
    mask: tuple[str, bytes, str] | None = None
    params: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def prepare_call(model: str, request: ImageRequest) -> PreparedCall:
    """Check everything the API would reject, so errors come before any network work."""
    if model in RETIRED_MODELS:
        raise InvalidRequest(
            f"The OpenAI image model {model} {RETIRED_MODELS[model]}. Current models: {', '.join(MODELS)}."
        )
    spec = MODELS.get(model)
    notes: list[str] = []
    if spec is None:
        spec = _UNKNOWN
        notes.append(f"{model} is not in Atelier's model table; the server checks its parameters.")

    op = request.operation
    endpoint = "generate" if op is Operation.GENERATE else "edit"
    prompt = _prompt_for(request, notes)
    options = {k: v for k, v in request.options.items() if v is not None}

    n = request.n
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_N:
        raise InvalidRequest(f"n must be between 1 and {MAX_N} images per call; got {n!r}.")
    api: dict[str, Any] = {"n": n, "size": _resolve_size(model, spec, request, options, notes)}
    api.update(_output_params(model, spec, options, notes))
    api.update(_endpoint_params(model, spec, endpoint, options, notes))

    call = PreparedCall(endpoint=endpoint, prompt=prompt, api_params=api, notes=notes)
    _attach_images(call, request)
    call.params = {"endpoint": endpoint, "prompt": prompt, **api}
    if model not in MODELS and not model.startswith(("gpt-image", "chatgpt-image")):
        # OpenAI-compatible servers may default to URLs; GPT image models reject this field.
        api["response_format"] = "b64_json"
    ignored = [name for name in _IGNORED_KNOBS if getattr(request, name) is not None]
    if ignored:
        notes.append(f"OpenAI image models have no {', '.join(ignored)}; ignored.")
    return call


def _output_params(
    model: str, spec: ModelSpec, options: Mapping[str, Any], notes: list[str]
) -> dict[str, Any]:
    """Quality, format, background and compression: the knobs both endpoints share."""
    quality = _choice(options, "quality", spec.qualities, model)
    output_format = _choice(options, "output_format", OUTPUT_FORMATS, model)
    background = _choice(options, "background", BACKGROUNDS, model)
    if background == "transparent":
        if output_format not in (None, "png", "webp"):
            raise InvalidRequest(
                f"A transparent background needs output_format png or webp, not {output_format}."
            )
        if spec.transparent_note:
            notes.append(spec.transparent_note)
    compression = options.get("output_compression")
    if compression is not None:
        if isinstance(compression, bool) or not isinstance(compression, int) or not 0 <= compression <= 100:
            raise InvalidRequest(f"output_compression must be an integer from 0 to 100; got {compression!r}.")
        if output_format not in ("webp", "jpeg"):
            raise InvalidRequest(
                "output_compression applies only to output_format webp or jpeg "
                f"(output_format is {output_format or 'png'})."
            )
    complexity = _choice(options, "complexity", COMPLEXITIES, model)
    safety_identifier = options.get("safety_identifier")
    if safety_identifier is not None and not isinstance(safety_identifier, str):
        raise InvalidRequest("safety_identifier must be a string.")
    values = {
        "quality": quality,
        "output_format": output_format,
        "background": background,
        "output_compression": compression,
        "complexity": complexity,
        "safety_identifier": safety_identifier,
    }
    return {name: value for name, value in values.items() if value is not None}


def _endpoint_params(
    model: str, spec: ModelSpec, endpoint: str, options: Mapping[str, Any], notes: list[str]
) -> dict[str, Any]:
    """moderation exists on generate only, input_fidelity on edit only: the other is noted, not sent."""
    params: dict[str, Any] = {}
    moderation = _choice(options, "moderation", MODERATION_LEVELS, model)
    if moderation is not None:
        if endpoint == "generate":
            params["moderation"] = moderation
        else:
            notes.append("moderation is a generate-only setting; the edits endpoint does not take it.")
    if options.get("input_fidelity") is not None:
        if spec.input_fidelity is None:
            raise InvalidRequest(f"{model} takes no input_fidelity; leave it out.")
        fidelity = _choice(options, "input_fidelity", spec.input_fidelity, model)
        if endpoint == "edit":
            params["input_fidelity"] = fidelity
        else:
            notes.append("input_fidelity applies to edits only; ignored for a fresh generation.")
    return params


def _prompt_for(request: ImageRequest, notes: list[str]) -> str:
    prompt = request.prompt.strip()
    if request.operation is Operation.VARIATION:
        prompt = f"{VARIATION_INSTRUCTION} {prompt}".strip()
    if not prompt:
        raise InvalidRequest("The prompt is empty; describe the image you want.")
    if request.negative_prompt.strip():
        prompt = f"{prompt}\n\nAvoid: {request.negative_prompt.strip()}"
        notes.append("OpenAI image models take no negative prompt; it was added to the prompt as 'Avoid: …'.")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InvalidRequest(f"The prompt is {len(prompt):,} characters; the limit is {MAX_PROMPT_CHARS:,}.")
    return prompt


def _choice(options: Mapping[str, Any], name: str, allowed: tuple[str, ...], model: str) -> str | None:
    value = options.get(name)
    if value is None:
        return None
    if value not in allowed:
        raise InvalidRequest(
            f"{name}={value!r} is not accepted by {model}; choose one of: {', '.join(allowed)}."
        )
    return str(value)


def _resolve_size(
    model: str, spec: ModelSpec, request: ImageRequest, options: Mapping[str, Any], notes: list[str]
) -> str:
    explicit = options.get("size")
    if explicit == "auto":
        return "auto"
    if explicit is not None:
        match = re.fullmatch(r"(\d+)x(\d+)", str(explicit))
        if not match:
            raise InvalidRequest(f"size must be 'auto' or WIDTHxHEIGHT such as 1024x1024; got {explicit!r}.")
        width, height = int(match[1]), int(match[2])
    else:
        width, height = request.width, request.height
    size = f"{width}x{height}"
    problem = _size_problem(spec, width, height)
    if problem is None:
        if width * height > EXPERIMENTAL_PIXELS:
            notes.append(f"Sizes above 2560x1440 are experimental on {model}.")
        return size
    same_as_source = bool(request.sources) and request.sources[0].size == (width, height)
    if explicit is None and request.operation is not Operation.GENERATE and same_as_source:
        notes.append(f"The source is {size}, which {model} cannot output; size auto was used.")
        return "auto"
    raise InvalidRequest(
        f"{model} cannot make {size} images ({problem}). Allowed sizes: {allowed_sizes_text(model)}."
    )


def _size_problem(spec: ModelSpec, width: int, height: int) -> str | None:
    if f"{width}x{height}" in STANDARD_SIZES:
        return None
    if not spec.flexible_sizes:
        return "not one of its sizes"
    if width <= 0 or height <= 0:
        return "sides must be positive"
    if width % SIZE_MULTIPLE or height % SIZE_MULTIPLE:
        return f"both sides must be multiples of {SIZE_MULTIPLE}"
    if max(width, height) > 3 * min(width, height):
        return "the aspect ratio must be between 1:3 and 3:1"
    if max(width, height) > MAX_EDGE or width * height > MAX_PIXELS:
        return f"the largest is {MAX_EDGE}x2160"
    return None


def _attach_images(call: PreparedCall, request: ImageRequest) -> None:
    op = request.operation
    if op is Operation.GENERATE:
        if request.sources or request.mask is not None:
            raise InvalidRequest("A fresh generation takes no source image or mask; use edit or inpaint.")
        return
    if not request.sources:
        raise InvalidRequest(f"{op.value} needs a source image.")
    if len(request.sources) > MAX_INPUT_IMAGES:
        raise InvalidRequest(
            f"At most {MAX_INPUT_IMAGES} source images per edit; got {len(request.sources)}."
        )
    if op is Operation.INPAINT and request.mask is None:
        raise InvalidRequest("inpaint needs a mask showing which area to repaint.")
    # the same door as every backend: loaded, within the pixel limit, RGB(A); mask fitted or refused
    sources, notes = check_sources(request.sources)
    call.notes += notes
    for i, source in enumerate(sources):
        data = _png(source)
        if len(data) > MAX_INPUT_BYTES:
            raise InvalidImage(f"Source image {i + 1} is over 50 MB as PNG; make it smaller.")
        call.images.append((f"image-{i + 1}.png", data, "image/png"))
    if request.mask is not None:
        fitted, notes = prepare_mask(request.mask, sources[0].size)
        call.notes += notes
        data = _png(openai_mask(fitted))
        if len(data) > MAX_MASK_BYTES:
            raise InvalidImage("The mask is over 4 MB as PNG; OpenAI accepts masks up to 4 MB.")
        call.mask = ("mask.png", data, "image/png")


def openai_mask(mask: PILImage.Image) -> PILImage.Image:
    """RGBA whose transparent pixels are the area to repaint (OpenAI's convention).

    The mask is read as on every other backend (`mask_channel`: white, or opaque on a transparent
    layer, marks the change), then inverted into OpenAI's alpha, so a mask that repaints the sky
    offline repaints the sky here too.
    """
    keep = mask_channel(mask).point(lambda v: 255 - v)
    out = PILImage.new("RGBA", mask.size, (0, 0, 0, 255))
    out.putalpha(keep)
    return out


def _png(image: PILImage.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# --------------------------------------------------------------------------- cost


def estimate_cost(model: str, usage: Mapping[str, Any] | None) -> float | None:
    """US dollars from the response's token counts and `TokenPrices`; None when unknown."""
    spec = MODELS.get(model)
    if spec is None or spec.prices is None or not usage:
        return None
    prices = spec.prices
    try:
        details = usage.get("input_tokens_details") or {}
        text_in = details.get("text_tokens")
        image_in = details.get("image_tokens")
        if text_in is None and image_in is None:
            text_in, image_in = usage.get("input_tokens", 0), 0
        output = usage.get("output_tokens", 0)
        cost = (
            int(text_in or 0) * prices.text_input
            + int(image_in or 0) * prices.image_input
            + int(output or 0) * prices.image_output
        ) / 1_000_000
    except (TypeError, ValueError, AttributeError):
        return None
    return round(cost, 6)


#: Output tokens of one 1024×1024 image by quality, from OpenAI's published table for its GPT
#: image models. Quality 'auto' (the API's default) may choose high, so it is priced as high.
_OUTPUT_TOKENS_1024: Final[Mapping[str, int]] = {"low": 272, "medium": 1056, "high": 4160}
_SQUARE_PIXELS: Final = 1024 * 1024
#: size 'auto' may pick the largest standard size
_AUTO_SIZE_SCALE: Final = 1536 * 1024 / _SQUARE_PIXELS


def estimate_request_cost(model: str, request: ImageRequest) -> float | None:
    """US dollars a request may cost at most, before it is sent; None when the price is unknown.

    The budget check needs this *before* the call, when there is no usage block yet. It errs
    high on purpose: sizes below 1024² are priced as 1024², every input image (sources and
    mask) as a high-quality image, and prompt text at three characters per token.
    """
    spec = MODELS.get(model)
    if spec is None or spec.prices is None:
        return None
    options = {k: v for k, v in request.options.items() if v is not None}
    size = _resolve_size(model, spec, request, options, [])
    quality = _choice(options, "quality", spec.qualities, model) or "auto"
    if size == "auto":
        scale = _AUTO_SIZE_SCALE
    else:
        width, height = (int(side) for side in size.split("x"))
        scale = max(1.0, width * height / _SQUARE_PIXELS)
    high = _OUTPUT_TOKENS_1024["high"]
    output_tokens = _OUTPUT_TOKENS_1024.get(quality, high) * scale * request.n
    image_inputs = len(request.sources) + (1 if request.mask is not None else 0)
    image_tokens = image_inputs * high * _AUTO_SIZE_SCALE
    text_tokens = (len(request.prompt) + len(request.negative_prompt) + len(VARIATION_INSTRUCTION)) / 3
    prices = spec.prices
    cost = (
        text_tokens * prices.text_input
        + image_tokens * prices.image_input
        + output_tokens * prices.image_output
    ) / 1_000_000
    return round(cost, 6)


# --------------------------------------------------------------------------- the backend


class OpenAIImagesBackend:
    """GPT image models through the official SDK; `base_url` also reaches compatible servers.

    Constructing one never fails and makes no call, so the app can list backends without a key;
    a missing key is reported by `run` as `AuthenticationFailed`. `base_url=None` means OpenAI
    itself (passed explicitly, so the SDK does not read OPENAI_BASE_URL behind the settings' back).
    Request options read: size ('auto' or 'WxH', overriding width/height), quality, background,
    output_format, output_compression, moderation (generate), input_fidelity (edit), complexity,
    safety_identifier; other keys belong to other backends and are ignored. `quality` here is the
    default for requests that do not set their own. `timeout` bounds one HTTP attempt,
    `total_timeout` the whole call with its `max_retries` retries (see the module docstring).
    """

    name = "openai"
    capabilities: frozenset[Operation] = frozenset(
        {Operation.GENERATE, Operation.EDIT, Operation.INPAINT, Operation.VARIATION, Operation.IMG2IMG}
    )

    def __init__(
        self,
        api_key: str | None,
        model: str,
        base_url: str | None = None,
        timeout: float = 120,
        max_retries: int = 2,
        organization: str | None = None,
        quality: str | None = None,
        total_timeout: float = DEFAULT_TOTAL_TIMEOUT,
    ) -> None:
        self.model = model
        self.quality = quality
        self.base_url = base_url or DEFAULT_BASE_URL
        self.timeout = timeout
        self.max_retries = max_retries
        self.total_timeout = total_timeout
        self._api_key = api_key.strip() if api_key else None
        self._organization = organization
        self._client: openai.OpenAI | None = None
        self._client_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"OpenAIImagesBackend(model={self.model!r}, host={self.host!r})"

    @property
    def host(self) -> str:
        """The base URL's host (and port), without any user:password part."""
        try:
            parts = urlsplit(self.base_url)
            port = parts.port
        except ValueError:
            return "the configured base URL"
        if not parts.hostname:
            return scrub(self.base_url.rsplit("@", 1)[-1])
        return parts.hostname + (f":{port}" if port else "")

    def run(
        self,
        request: ImageRequest,
        progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
    ) -> ImageResult:
        check_capability(self, request.operation)
        if not (self.timeout > 0 and self.total_timeout > 0 and self.max_retries >= 0):
            raise InvalidRequest(
                "The OpenAI time limits must be positive and the retry count at least 0 "
                f"(timeout={self.timeout!r}, total_timeout={self.total_timeout!r}, "
                f"max_retries={self.max_retries!r})."
            )
        client = self._get_client()
        call = prepare_call(self.model, self._with_defaults(request))
        if cancel is not None and cancel.cancelled:
            raise Cancelled()
        if progress is not None:
            progress(0, 1)
        log.info(
            "openai images.%s model=%s size=%s n=%s host=%s",
            call.endpoint,
            self.model,
            call.api_params.get("size"),
            call.api_params.get("n"),
            self.host,
        )
        response = self._send(client, call, cancel)
        images, notes = self._decode(response, call)
        usage = _as_dict(response.usage)
        params = dict(call.params)
        for name in ("size", "quality", "background", "output_format"):
            reported = getattr(response, name, None)
            if isinstance(reported, str) and reported != params.get(name):
                params[f"requested_{name}"] = params.get(name)
                params[name] = reported
        result = ImageResult(
            images=images,
            backend=self.name,
            model=self.model,
            params=params,
            notes=[*call.notes, *notes],
            usage=usage,
            cost_usd=estimate_cost(self.model, usage),
        )
        if progress is not None:
            progress(1, 1)
        return result

    def estimate_cost(self, request: ImageRequest) -> float | None:
        """The most this request may cost (see `estimate_request_cost`); checks it like `run` does."""
        return estimate_request_cost(self.model, self._with_defaults(request))

    def _with_defaults(self, request: ImageRequest) -> ImageRequest:
        if self.quality is None or request.options.get("quality") is not None:
            return request
        return replace(request, options={**request.options, "quality": self.quality})

    def close(self) -> None:
        """Release pooled connections now instead of at garbage collection."""
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    # -- the call -----------------------------------------------------------
    def _get_client(self) -> openai.OpenAI:
        if not self._api_key:
            raise AuthenticationFailed(
                "No OpenAI API key: set OPENAI_API_KEY (or choose another backend) "
                "to generate images with OpenAI."
            )
        with self._client_lock:
            if self._client is None:
                try:
                    self._client = openai.OpenAI(
                        api_key=self._api_key,
                        organization=self._organization,
                        base_url=self.base_url,
                        timeout=httpx2.Timeout(self.timeout, connect=min(self.timeout, 10.0)),
                        max_retries=0,  # `_send` retries, within the overall deadline
                        http_client=_HttpClient(verify=_shared_ssl_context()),
                    )
                except (openai.OpenAIError, httpx2.InvalidURL, ValueError, TypeError):
                    # the error text may quote the URL, credentials and all: leave it out
                    raise BackendUnreachable(
                        "The OpenAI base URL setting is not a usable URL; "
                        f"it should look like {DEFAULT_BASE_URL}."
                    ) from None
            return self._client

    def _send(self, client: openai.OpenAI, call: PreparedCall, cancel: CancelToken | None) -> ImagesResponse:
        """The call with its retries, all within `total_timeout` (see the module docstring)."""
        started = time.monotonic()
        deadline = started + self.total_timeout
        tries = 0
        while True:
            attempt_timeout = max(0.05, min(self.timeout, deadline - time.monotonic()))
            tries += 1
            try:
                raw = self._attempt(client, call, attempt_timeout, retries_taken=tries - 1)
            except openai.OpenAIError as err:
                failure = err
            except ValueError:  # the body was not JSON (json/pydantic errors are ValueErrors)
                error: ToolError = self._malformed("its body is not valid JSON")
                break
            else:
                if not isinstance(raw, ImagesResponse):
                    raise self._malformed("it is not an images response")
                return raw

            wait = _retry_wait(failure, tries)
            elapsed = time.monotonic() - started
            error = self._translate(failure, tries=tries, attempt_timeout=attempt_timeout)
            cut_short = attempt_timeout < self.timeout and isinstance(failure, openai.APITimeoutError)
            if cut_short:  # this try had only what was left of the overall time, and used it up
                error = _amended(error, self._gave_up(tries, elapsed, "ran out"))
                break
            if wait is None or tries > self.max_retries:
                break
            if time.monotonic() + wait + min(MIN_ATTEMPT_SECONDS, self.timeout) > deadline:
                error = _amended(error, self._gave_up(tries, elapsed, "leaves no time for another try"))
                break
            log.info(
                "openai images.%s: retrying in %.1f s (retry %d of %d)",
                call.endpoint,
                wait,
                tries,
                self.max_retries,
            )
            if cancel is None:
                time.sleep(wait)
            elif cancel.wait(wait):
                raise Cancelled()
        log.warning("openai images.%s failed: %s", call.endpoint, error.user_message)
        raise error  # not chained: SDK errors hold the request, Authorization header included

    def _attempt(
        self, client: openai.OpenAI, call: PreparedCall, timeout: float, *, retries_taken: int
    ) -> object:
        """One HTTP request; the retry count header tells the server (and its logs) which try this is."""
        options: dict[str, Any] = {
            "timeout": httpx2.Timeout(timeout, connect=min(timeout, 10.0)),
            "extra_headers": {"x-stainless-retry-count": str(retries_taken)},
        }
        if call.endpoint == "generate":
            return client.images.generate(model=self.model, prompt=call.prompt, **call.api_params, **options)
        image: Any = call.images[0] if len(call.images) == 1 else call.images
        extra: dict[str, Any] = {"mask": call.mask} if call.mask is not None else {}
        return client.images.edit(
            model=self.model, prompt=call.prompt, image=image, **extra, **call.api_params, **options
        )

    def _gave_up(self, tries: int, elapsed: float, why: str) -> str:
        """The sentence added when the overall deadline, not the retry count, ended the call."""
        return (
            f"Gave up after {tries} {'try' if tries == 1 else 'tries'} in {_duration(elapsed)}: "
            f"the {_duration(self.total_timeout)} limit for one request {why}."
        )

    def _decode(self, response: ImagesResponse, call: PreparedCall) -> tuple[list[GeneratedImage], list[str]]:
        data = response.data
        if not isinstance(data, list) or not data:
            raise self._malformed("it has no image data")
        images: list[GeneratedImage] = []
        for item in data:
            b64 = getattr(item, "b64_json", None)
            if not isinstance(b64, str) or not b64:
                what = (
                    "a URL instead of image data"
                    if getattr(item, "url", None)
                    else "an entry without image data"
                )
                raise self._malformed(f"it holds {what}")
            try:
                image = PILImage.open(io.BytesIO(base64.b64decode(b64, validate=True)))
                image.load()
            except (binascii.Error, ValueError, OSError, PILImage.DecompressionBombError):
                raise self._malformed("an image is not valid base64 image data") from None
            revised = getattr(item, "revised_prompt", None)
            if isinstance(revised, str) and self._api_key:
                # stored in the database and the PNG: a server echoing the key must not put it there
                revised = revised.replace(self._api_key, "[redacted]")
            images.append(GeneratedImage(image=image, seed=None, revised_prompt=revised or None))
        notes = []
        if len(images) != call.api_params["n"]:
            notes.append(f"Asked for {call.api_params['n']} images, received {len(images)}.")
        return images, notes

    # -- errors -------------------------------------------------------------
    def _malformed(self, why: str) -> BackendServerError:
        return BackendServerError(
            f"The image service returned a malformed response ({why}). Try again; if it persists, "
            f"check that {self.host} is an OpenAI-compatible Images API."
        )

    def _clean(self, text: str) -> str:
        return scrub(text, self._api_key)

    def _translate(
        self, err: openai.OpenAIError, *, tries: int = 1, attempt_timeout: float | None = None
    ) -> ToolError:
        """One SDK error → one typed, readable, key-free `ToolError`."""
        if isinstance(err, openai.APITimeoutError):
            waited = self.timeout if attempt_timeout is None else attempt_timeout
            return BackendTimeout(
                f"The image service at {self.host} did not answer within {_duration(waited)}"
                + (f" (tried {tries} times)." if tries > 1 else ".")
                + " Try again, or ask for fewer or smaller images."
            )
        if isinstance(err, openai.APIConnectionError):
            return BackendUnreachable(
                f"Cannot reach the image service at {self.host}: the connection failed. "
                "Check the network and the OpenAI base URL setting."
            )
        if not isinstance(err, openai.APIStatusError):
            if isinstance(err, openai.APIResponseValidationError):
                return self._malformed("it does not match the Images API schema")
            return BackendServerError(self._clean(f"The OpenAI client failed: {err}"))

        status = err.status_code
        message = self._clean(_server_message(err))
        if message and message[-1] not in ".!?…":
            message += "."  # our own advice follows as the next sentence
        said = f": {message}" if message else "."
        if status == 401:
            return AuthenticationFailed(f"OpenAI rejected the API key (401){said} Check OPENAI_API_KEY.")
        if status == 403:
            return AuthenticationFailed(
                f"OpenAI refused access to {self.model} (403 permission denied){said} "
                "The key's project may lack access to this model, or the organization needs verification."
            )
        if status == 429:
            retry_after = _retry_after(err.response.headers)
            if err.code == "insufficient_quota":
                return RateLimited(f"The OpenAI account is out of credit (429){said} Check billing.", None)
            wait = (
                f" Try again in {_seconds(retry_after)}."
                if retry_after is not None
                else " Try again shortly."
            )
            return RateLimited(f"OpenAI's rate limit was reached (429){said}{wait}", retry_after)
        if status == 400 and err.code in ("moderation_blocked", "content_policy_violation"):
            reason = message or "the request was flagged by the safety system"
            return ContentPolicyViolation(
                f"OpenAI declined this request under its content policy: {reason} "
                "Rephrase the request and try again.",
                reason=reason,
            )
        if status in (400, 413, 422):
            where = f" ({err.param})" if isinstance(err.param, str) and err.param else ""
            return InvalidRequest(f"OpenAI rejected the request{where}{said}")
        if status == 404:
            return ModelNotFound(
                f"The image service at {self.host} answered 404{said} "
                f"Check the model name ({self.model}) and the base URL."
            )
        if status >= 500:
            return BackendServerError(
                f"OpenAI's image service had a server error ({status}){said} Try again in a moment."
            )
        return BackendServerError(f"The image service answered {status}{said}")


class _HttpClient(openai.DefaultHttpxClient):
    """The SDK's defaults with a shared SSL context; closes its pool when dropped, as the SDK's own does."""

    def __del__(self) -> None:
        if not self.is_closed:
            with contextlib.suppress(Exception):
                self.close()


@functools.cache
def _shared_ssl_context() -> ssl.SSLContext:
    """Loading the CA bundle costs ~0.1 s per client; one context serves every client in the process."""
    return httpx2.create_ssl_context()


def _server_message(err: openai.APIStatusError) -> str:
    body = err.body
    if isinstance(body, dict):
        text = body.get("message")
        text = text if isinstance(text, str) else ""
    elif isinstance(body, str):
        text = body
    else:
        text = ""
    text = " ".join(text.split())
    return text if len(text) <= 400 else text[:399] + "…"


def _retry_wait(err: openai.OpenAIError, tries: int) -> float | None:
    """Seconds to wait before retrying `err`, by the SDK's rules; None when a retry cannot help."""
    if isinstance(err, openai.APIConnectionError):  # timeouts are connection errors too
        retry_after: float | None = None
    elif isinstance(err, openai.APIStatusError):
        headers = err.response.headers
        retry_after = _retry_after(headers)
        if retry_after is not None and retry_after > MAX_RETRY_AFTER:
            return None  # the server asks for more than the SDK would ever wait
        should_retry = headers.get("x-should-retry")
        if should_retry == "false":
            return None
        status = err.status_code
        if should_retry != "true" and status not in _RETRIED_STATUSES and status < 500:
            return None
        if err.code == "insufficient_quota":
            return None  # waiting does not add credit
    else:
        return None
    if retry_after is not None and 0 < retry_after <= MAX_RETRY_AFTER:
        return retry_after
    backoff = min(INITIAL_RETRY_DELAY * 2.0 ** min(tries - 1, 30), MAX_RETRY_DELAY)
    return backoff * (1 - 0.25 * random.random())


def _amended(error: ToolError, sentence: str) -> ToolError:
    """The same typed error (and its retry_after or reason) with one more sentence for the user."""
    error.user_message = f"{error.user_message} {sentence}"
    error.args = (error.user_message,)
    return error


def _duration(value: float) -> str:
    """Seconds for a message: "0.3 s", "4.2 s", "300 s"."""
    return f"{value:.1f} s".replace(".0 s", " s") if value < 10 else f"{value:.0f} s"


def _seconds(value: float) -> str:
    """A wait in words, rounded up: waiting a little too long beats being refused again."""
    whole = max(1, math.ceil(value))
    return f"{whole} second" if whole == 1 else f"{whole} seconds"


def _retry_after(headers: httpx2.Headers) -> float | None:
    """Seconds to wait, from `retry-after-ms` or `retry-after` (seconds or an HTTP date)."""
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / divisor
        except ValueError:
            if name == "retry-after":
                try:
                    when = email.utils.parsedate_to_datetime(value)
                except (TypeError, ValueError):
                    return None
                return max(0.0, when.timestamp() - time.time())
            continue
        return seconds if seconds >= 0 and seconds != float("inf") else None
    return None


def _as_dict(value: object) -> dict[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, openai.BaseModel):
        return value.model_dump(exclude_none=True)
    if isinstance(value, dict):
        return dict(value)
    return None
