"""The OpenAI adapter against a real HTTP server speaking OpenAI's wire format (tests/fake_openai.py).

The SDK is not mocked: what these tests check is what actually goes over the wire (JSON and
multipart bodies), what comes back (base64 PNGs, usage) and how every failure reads to a user.
"""

from __future__ import annotations

import base64
import io
import itertools
import logging
import socket
import threading
import time
import traceback
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from PIL import Image

from tests.fake_openai import (
    CHAT_COMPLETIONS,
    EDITS,
    GENERATIONS,
    CannedResponse,
    FakeOpenAI,
    FilePart,
    RecordedRequest,
    chat_completion,
    chat_completion_stream,
    error_response,
    images_response,
    png_bytes,
    tool_call,
    usage_block,
)
from tools.base import (
    AuthenticationFailed,
    BackendServerError,
    BackendTimeout,
    BackendUnreachable,
    Cancelled,
    CancelToken,
    ContentPolicyViolation,
    ImageBackend,
    ImageRequest,
    InvalidImage,
    InvalidRequest,
    ModelNotFound,
    Operation,
    RateLimited,
    ToolError,
    UnsupportedOperation,
)
from tools.image_input import prepare_mask
from tools.openai_images import (
    DEFAULT_TOTAL_TIMEOUT,
    MODELS,
    VARIATION_INSTRUCTION,
    ModelSpec,
    OpenAIImagesBackend,
    estimate_cost,
    estimate_request_cost,
    openai_mask,
    scrub,
)

SENTINEL = "sk-test-SENTINEL-123"
PRICED = [m for m, spec in MODELS.items() if spec.prices is not None]


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


def make_backend(server: FakeOpenAI, model: str = "gpt-image-2", **kwargs: Any) -> OpenAIImagesBackend:
    options: dict[str, Any] = {"base_url": server.base_url, "max_retries": 0, "timeout": 5.0}
    options.update(kwargs)
    return OpenAIImagesBackend(api_key=SENTINEL, model=model, **options)


def gen(prompt: str = "a red fox in snow", **kwargs: Any) -> ImageRequest:
    kwargs.setdefault("width", 1024)
    kwargs.setdefault("height", 1024)
    return ImageRequest(operation=Operation.GENERATE, prompt=prompt, **kwargs)


def edit(op: Operation = Operation.EDIT, n_sources: int = 1, side: int = 512, **kwargs: Any) -> ImageRequest:
    """Small sources keep the suite fast; 512x512 is a valid size for the flexible-size models."""
    sources = tuple(Image.new("RGB", (side, side), (10 * i, 80, 160)) for i in range(n_sources))
    kwargs.setdefault("width", side)
    kwargs.setdefault("height", side)
    kwargs.setdefault("prompt", "make the sky purple")
    return ImageRequest(operation=op, sources=sources, **kwargs)


def sent_images(request: RecordedRequest) -> list[Image.Image]:
    """The images the server put in its answer, decoded independently of the adapter."""
    assert request.response is not None
    out: list[Image.Image] = []
    for item in request.response.json()["data"]:
        img = Image.open(io.BytesIO(base64.b64decode(item["b64_json"])))
        img.load()
        out.append(img)
    return out


def same_pixels(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and a.mode == b.mode and a.tobytes() == b.tobytes()


# --------------------------------------------------------------------------- protocol


def test_is_an_image_backend_with_its_capabilities(server: FakeOpenAI) -> None:
    backend = make_backend(server)
    assert isinstance(backend, ImageBackend)
    assert backend.name == "openai"
    assert backend.capabilities == {
        Operation.GENERATE,
        Operation.EDIT,
        Operation.INPAINT,
        Operation.VARIATION,
        Operation.IMG2IMG,
    }
    with pytest.raises(UnsupportedOperation):
        backend.run(ImageRequest(operation=Operation.UPSCALE, prompt="x"))
    assert SENTINEL not in repr(backend)
    assert server.requests == []


# --------------------------------------------------------------------------- generate


@pytest.mark.parametrize("model", list(MODELS))
def test_generate_sends_the_documented_json_for_every_current_model(server: FakeOpenAI, model: str) -> None:
    result = make_backend(server, model).run(
        gen(width=1536, height=1024, options={"quality": "high", "output_format": "png"})
    )

    [request] = server.requests
    assert request.method == "POST" and request.path == GENERATIONS
    assert request.header("authorization") == f"Bearer {SENTINEL}"
    assert request.json == {
        "model": model,
        "prompt": "a red fox in snow",
        "n": 1,
        "size": "1536x1024",
        "quality": "high",
        "output_format": "png",
    }
    assert "response_format" not in request.json  # GPT image models always answer in base64
    sent = sent_images(request)
    assert len(result.images) == 1
    for got, expected in zip(result.images, sent, strict=True):
        assert same_pixels(got.image, expected)
        assert got.seed is None
    assert result.backend == "openai" and result.model == model
    assert result.params["size"] == "1536x1024" and result.params["n"] == 1
    assert result.usage is not None and result.usage["output_tokens"] == 1056
    assert (result.cost_usd is not None) == (model in PRICED)


def test_generate_records_revised_prompts_usage_and_cost(server: FakeOpenAI) -> None:
    usage = usage_block(text_in=100, image_in=0, image_out=4160)
    server.enqueue(
        GENERATIONS,
        images_response(
            [png_bytes(64, 64, (1, 2, 3)), png_bytes(64, 64, (4, 5, 6))],
            revised_prompts=["A red fox standing in fresh snow at dawn", None],
            usage=usage,
            quality="high",
        ),
    )
    result = make_backend(server, "gpt-image-2").run(gen(n=2, options={"quality": "auto"}))

    assert [img.revised_prompt for img in result.images] == ["A red fox standing in fresh snow at dawn", None]
    assert result.usage == usage
    assert result.cost_usd == pytest.approx((100 * 5.00 + 4160 * 30.00) / 1_000_000)
    # the server says which quality "auto" became; the request is kept beside it
    assert result.params["quality"] == "high" and result.params["requested_quality"] == "auto"


def test_generate_passes_generate_only_options(server: FakeOpenAI) -> None:
    options = {
        "background": "transparent",
        "output_format": "webp",
        "output_compression": 80,
        "moderation": "low",
        "complexity": "high",
        "input_fidelity": "high",  # edits only: dropped with a note
    }
    result = make_backend(server, "gpt-image-2.5-flare").run(gen(width=512, height=512, options=options))
    body = server.requests[0].json
    assert body["background"] == "transparent"
    assert body["output_format"] == "webp" and body["output_compression"] == 80
    assert body["moderation"] == "low" and body["complexity"] == "high"
    assert "input_fidelity" not in body
    assert any("input_fidelity" in note for note in result.notes)
    assert result.images[0].image.format == "WEBP"


def test_flexible_sizes_on_gpt_image_2(server: FakeOpenAI) -> None:
    result = make_backend(server, "gpt-image-2").run(gen(width=1536, height=864))
    assert server.requests[0].json["size"] == "1536x864"
    assert result.images[0].image.size == (1536, 864)


def test_size_auto_and_experimental_note(server: FakeOpenAI) -> None:
    backend = make_backend(server, "gpt-image-2")
    backend.run(gen(options={"size": "auto"}))
    assert server.requests[0].json["size"] == "auto"
    big = backend.run(gen(width=2736, height=1536, options={"quality": "low"}))
    assert any("experimental" in note for note in big.notes)


def test_negative_prompt_and_seed_become_notes(server: FakeOpenAI) -> None:
    result = make_backend(server).run(gen(negative_prompt="people, text", seed=42, steps=30))
    assert server.requests[0].json["prompt"] == "a red fox in snow\n\nAvoid: people, text"
    assert any("negative prompt" in note for note in result.notes)
    assert any("seed, steps" in note for note in result.notes)


def test_unknown_model_on_a_compatible_server_asks_for_base64(server: FakeOpenAI) -> None:
    result = make_backend(server, "local-flux").run(gen(width=512, height=512))
    assert server.requests[0].json["response_format"] == "b64_json"
    assert any("not in Atelier's model table" in note for note in result.notes)
    assert result.cost_usd is None


def test_progress_and_cancel(server: FakeOpenAI) -> None:
    calls: list[tuple[int, int]] = []
    make_backend(server).run(gen(), progress=lambda step, total: calls.append((step, total)))
    assert calls == [(0, 1), (1, 1)]

    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        make_backend(server).run(gen(), cancel=token)
    assert len(server.requests) == 1


def test_close_releases_the_client_and_a_later_run_reopens_it(server: FakeOpenAI) -> None:
    backend = make_backend(server)
    backend.run(gen())
    backend.close()
    backend.close()  # idempotent
    backend.run(gen())
    assert len(server.requests) == 2


# --------------------------------------------------------------------------- edits


def test_edit_sends_multipart_with_one_image_part(server: FakeOpenAI) -> None:
    request = edit(side=1024, options={"input_fidelity": "high", "quality": "medium", "moderation": "low"})
    result = make_backend(server, "gpt-image-1.5").run(request)

    [sent] = server.requests
    assert sent.path == EDITS and (sent.header("content-type") or "").startswith("multipart/form-data")
    assert sent.form == {
        "model": ["gpt-image-1.5"],
        "prompt": ["make the sky purple"],
        "n": ["1"],
        "size": ["1024x1024"],
        "quality": ["medium"],
        "input_fidelity": ["high"],
    }
    [part] = sent.files
    assert (part.name, part.filename, part.content_type) == ("image", "image-1.png", "image/png")
    assert same_pixels(part.image(), request.sources[0])
    assert not sent.files_named("mask")
    assert any("moderation" in note for note in result.notes)  # not an edits parameter
    assert same_pixels(result.images[0].image, sent_images(sent)[0])


def test_edit_with_several_images_uses_image_array_parts(server: FakeOpenAI) -> None:
    request = edit(n_sources=3, n=2)
    result = make_backend(server, "gpt-image-2").run(request)
    sent = server.requests[0]
    parts = sent.files_named("image[]")
    assert [p.filename for p in parts] == ["image-1.png", "image-2.png", "image-3.png"]
    for part, source in zip(parts, request.sources, strict=True):
        assert same_pixels(part.image(), source)
    assert sent.field("n") == "2" and len(result.images) == 2


def test_inpaint_sends_mask_part_in_openai_convention(server: FakeOpenAI) -> None:
    mask = Image.new("L", (512, 512), 0)
    mask.paste(255, (0, 0, 256, 512))  # white = repaint (diffusers convention)
    result = make_backend(server, "gpt-image-2").run(edit(Operation.INPAINT, mask=mask))

    sent = server.requests[0]
    [mask_part] = sent.files_named("mask")
    assert (mask_part.filename, mask_part.content_type) == ("mask.png", "image/png")
    alpha = mask_part.image().getchannel("A")
    assert alpha.getpixel((10, 10)) == 0  # transparent = repaint
    assert alpha.getpixel((500, 10)) == 255
    assert sent.files_named("image")
    assert result.params["endpoint"] == "edit"


@pytest.mark.parametrize(
    "drawn",
    ["white-on-black", "strokes-on-a-transparent-layer", "white-on-black-saved-as-opaque-rgba"],
)
def test_a_mask_marks_the_same_area_as_on_every_other_backend(drawn: str) -> None:
    """The square the user painted is what OpenAI repaints (transparent there), whatever the
    file's mode, and it is the area the offline renderer would change."""
    if drawn == "strokes-on-a-transparent-layer":
        mask = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
        mask.paste((255, 255, 255, 255), (2, 2, 5, 5))
    else:
        mask = Image.new("L", (8, 8), 0)
        mask.paste(255, (2, 2, 5, 5))
        if drawn.endswith("opaque-rgba"):
            mask = mask.convert("RGBA")
    alpha = openai_mask(mask).getchannel("A")
    repainted = {(x, y) for x in range(8) for y in range(8) if alpha.getpixel((x, y)) == 0}
    assert repainted == {(x, y) for x in range(2, 5) for y in range(2, 5)}
    changed_offline, _ = prepare_mask(mask, (8, 8))
    assert repainted == {(x, y) for x in range(8) for y in range(8) if changed_offline.getpixel((x, y))}


@pytest.mark.parametrize("op", [Operation.VARIATION, Operation.IMG2IMG])
def test_variation_and_img2img_are_edits(server: FakeOpenAI, op: Operation) -> None:
    make_backend(server).run(edit(op, prompt="in autumn colours"))
    sent = server.requests[0]
    assert sent.path == EDITS
    prompt = sent.field("prompt") or ""
    if op is Operation.VARIATION:
        assert prompt == f"{VARIATION_INSTRUCTION} in autumn colours"
    else:
        assert prompt == "in autumn colours"


def test_variation_without_prompt_uses_the_instruction(server: FakeOpenAI) -> None:
    make_backend(server).run(edit(Operation.VARIATION, prompt=""))
    assert server.requests[0].field("prompt") == VARIATION_INSTRUCTION


def test_edit_of_an_odd_sized_source_uses_size_auto(server: FakeOpenAI) -> None:
    source = Image.new("RGB", (800, 600), "white")
    request = ImageRequest(
        operation=Operation.EDIT, prompt="add a hat", sources=(source,), width=800, height=600
    )
    result = make_backend(server, "gpt-image-1.5").run(request)
    assert server.requests[0].field("size") == "auto"
    assert any("size auto" in note for note in result.notes)
    assert result.images[0].image.size == (800, 600)


def _edit_size(spec: ModelSpec) -> str:
    """A size only some models take, so the test shows each model gets what it accepts."""
    return "1536x864" if spec.flexible_sizes else "1536x1024"


def _edit_options(spec: ModelSpec) -> dict[str, Any]:
    options: dict[str, Any] = {
        "size": _edit_size(spec),
        "quality": "xhigh" if "xhigh" in spec.qualities else "high",
        "output_format": "webp",
        "output_compression": 70,
        "background": "transparent",
    }
    if spec.input_fidelity is not None:
        options["input_fidelity"] = spec.input_fidelity[0]
    return options


@pytest.mark.parametrize("inputs", ["one-image-and-a-mask", "three-images"])
@pytest.mark.parametrize("model", list(MODELS))
def test_edit_sends_the_documented_multipart_for_every_current_model(
    server: FakeOpenAI, model: str, inputs: str
) -> None:
    spec = MODELS[model]
    options = _edit_options(spec)
    if inputs == "three-images":
        request = edit(n_sources=3, side=64, n=2, options=options)
    else:
        mask = Image.new("L", (64, 64), 0)
        mask.paste(255, (0, 0, 32, 64))  # repaint the left half
        request = edit(Operation.INPAINT, side=64, n=2, mask=mask, options=options)
    result = make_backend(server, model).run(request)

    [sent] = server.requests
    assert sent.path == EDITS
    expected = {
        "model": [model],
        "prompt": ["make the sky purple"],
        "n": ["2"],
        "size": [_edit_size(spec)],
        "quality": [options["quality"]],
        "output_format": ["webp"],
        "output_compression": ["70"],
        "background": ["transparent"],
    }
    if spec.input_fidelity is not None:
        expected["input_fidelity"] = [spec.input_fidelity[0]]
    assert sent.form == expected  # no moderation, no response_format, nothing the model rejects
    if inputs == "three-images":
        assert sent.files_named("image") == [] and sent.files_named("mask") == []
        parts = sent.files_named("image[]")
        assert [p.filename for p in parts] == ["image-1.png", "image-2.png", "image-3.png"]
        for part, source in zip(parts, request.sources, strict=True):
            assert same_pixels(part.image(), source)
    else:
        [part] = sent.files_named("image")
        assert sent.files_named("image[]") == []
        assert same_pixels(part.image(), request.sources[0])
        [mask_part] = sent.files_named("mask")
        alpha = mask_part.image().getchannel("A")
        assert mask_part.image().size == (64, 64)
        assert (alpha.getpixel((5, 5)), alpha.getpixel((60, 5))) == (0, 255)  # transparent = repaint
    assert [img.image.format for img in result.images] == ["WEBP", "WEBP"]
    assert result.params["size"] == _edit_size(spec)
    assert any("Transparent backgrounds" in note for note in result.notes) == (
        spec.transparent_note is not None
    )


def _invalid_edit_cases() -> list[Any]:
    """For each model, edit parameters it does not take; each must fail before any request."""
    cases: list[Any] = []
    for model, spec in MODELS.items():
        bad_size = "1000x1000" if spec.flexible_sizes else "1536x864"
        size_fragment = "multiples of 16" if spec.flexible_sizes else "cannot make 1536x864"
        cases.append(pytest.param(model, {"size": bad_size}, size_fragment, id=f"{model}-size"))
        if "xhigh" not in spec.qualities:
            cases.append(pytest.param(model, {"quality": "xhigh"}, "quality='xhigh'", id=f"{model}-quality"))
        cases.append(pytest.param(model, {"quality": "ultra"}, "quality='ultra'", id=f"{model}-ultra"))
        if spec.input_fidelity is None:
            fidelity, fragment = "high", f"{model} takes no input_fidelity"
        else:
            fidelity = "high" if "high" not in spec.input_fidelity else "medium"
            fragment = f"input_fidelity={fidelity!r} is not accepted by {model}"
        cases.append(pytest.param(model, {"input_fidelity": fidelity}, fragment, id=f"{model}-fidelity"))
        cases.append(
            pytest.param(
                model,
                {"background": "transparent", "output_format": "jpeg"},
                "png or webp",
                id=f"{model}-transparent-jpeg",
            )
        )
        cases.append(pytest.param(model, {"output_format": "gif"}, "png, webp, jpeg", id=f"{model}-gif"))
        cases.append(pytest.param(model, {"n": 11}, "between 1 and 10", id=f"{model}-n"))
    return cases


@pytest.mark.parametrize(("model", "options", "fragment"), _invalid_edit_cases())
def test_invalid_edit_parameters_fail_per_model_before_any_request(
    server: FakeOpenAI, model: str, options: dict[str, Any], fragment: str
) -> None:
    fields = dict(options)
    n = fields.pop("n", 1)
    with pytest.raises(InvalidRequest) as caught:
        make_backend(server, model).run(edit(side=64, n=n, options=fields))
    assert fragment in caught.value.user_message
    assert server.requests == []


def test_content_policy_block_on_an_edit_keeps_the_reason(server: FakeOpenAI) -> None:
    server.enqueue(
        EDITS,
        error_response(
            400,
            "Your request was rejected by the safety system: the edited image shows a real person.",
            type="image_generation_user_error",
            code="moderation_blocked",
        ),
    )
    mask = Image.new("L", (64, 64), 255)
    with pytest.raises(ContentPolicyViolation) as caught:
        make_backend(server).run(edit(Operation.INPAINT, side=64, mask=mask))
    assert (
        caught.value.reason
        == "Your request was rejected by the safety system: the edited image shows a real person."
    )
    assert caught.value.user_message.startswith("OpenAI declined this request under its content policy")
    assert "Rephrase the request" in caught.value.user_message
    assert len(server.requests_to(EDITS)) == 1


# --------------------------------------------------------------------------- validation before any call


@pytest.mark.parametrize(
    ("model", "request_", "error", "fragment"),
    [
        ("dall-e-3", gen(), InvalidRequest, "dall-e-3 was retired"),
        ("gpt-image-1", gen(), InvalidRequest, "shut down"),
        ("gpt-image-1.5", gen(width=512, height=512), InvalidRequest, "Allowed sizes: 1024x1024, 1536x1024"),
        ("gpt-image-1.5", gen(width=1536, height=864), InvalidRequest, "cannot make 1536x864"),
        ("gpt-image-2", gen(width=1000, height=1000), InvalidRequest, "multiples of 16"),
        ("gpt-image-2", gen(width=2048, height=512), InvalidRequest, "between 1:3 and 3:1"),
        ("gpt-image-2", gen(width=4096, height=2160), InvalidRequest, "3840x2160"),
        ("gpt-image-2", gen(options={"size": "big"}), InvalidRequest, "WIDTHxHEIGHT"),
        ("gpt-image-2", gen(options={"quality": "xhigh"}), InvalidRequest, "quality='xhigh'"),
        ("gpt-image-2", gen(options={"quality": "hd"}), InvalidRequest, "low, medium, high, auto"),
        (
            "gpt-image-2",
            gen(options={"background": "transparent", "output_format": "jpeg"}),
            InvalidRequest,
            "png or webp",
        ),
        ("gpt-image-2", gen(options={"background": "clear"}), InvalidRequest, "background="),
        ("gpt-image-2", gen(options={"output_format": "gif"}), InvalidRequest, "png, webp, jpeg"),
        ("gpt-image-2", gen(options={"output_compression": 50}), InvalidRequest, "webp or jpeg"),
        (
            "gpt-image-2",
            gen(options={"output_format": "jpeg", "output_compression": 101}),
            InvalidRequest,
            "0 to 100",
        ),
        ("gpt-image-2", gen(n=0), InvalidRequest, "between 1 and 10"),
        ("gpt-image-2", gen(n=11), InvalidRequest, "between 1 and 10"),
        ("gpt-image-2", gen(options={"moderation": "high"}), InvalidRequest, "low, auto"),
        ("gpt-image-2", gen(prompt="   "), InvalidRequest, "prompt is empty"),
        ("gpt-image-2", gen(prompt="x" * 32_001), InvalidRequest, "32,000"),
        ("gpt-image-2", edit(options={"input_fidelity": "high"}), InvalidRequest, "takes no input_fidelity"),
        ("gpt-image-1-mini", edit(options={"input_fidelity": "high"}), InvalidRequest, "choose one of: low"),
        ("gpt-image-2", edit(Operation.INPAINT), InvalidRequest, "needs a mask"),
        ("gpt-image-2", edit(n_sources=0), InvalidRequest, "needs a source image"),
        ("gpt-image-2", edit(n_sources=17), InvalidRequest, "At most 16"),
        ("gpt-image-2", gen(sources=(Image.new("RGB", (8, 8)),)), InvalidRequest, "takes no source"),
        (
            "gpt-image-2",
            edit(Operation.INPAINT, mask=Image.new("L", (256, 128), 255)),
            InvalidImage,
            "shapes differ",
        ),
    ],
)
def test_invalid_requests_fail_before_any_network_call(
    server: FakeOpenAI, model: str, request_: ImageRequest, error: type[ToolError], fragment: str
) -> None:
    with pytest.raises(error) as caught:
        make_backend(server, model).run(request_)
    assert fragment in caught.value.user_message
    assert server.requests == []


def _with_sources(*sources: Any, mask: Any = None, op: Operation = Operation.EDIT) -> ImageRequest:
    return ImageRequest(operation=op, prompt="add a hat", sources=sources, mask=mask, width=64, height=64)


@pytest.mark.parametrize(
    ("request_", "fragment"),
    [
        (_with_sources(b"\x89PNG not decoded"), "The source image is not an image (it is a bytes)."),
        (
            _with_sources(Image.new("RGB", (64, 64)), Image.new("1", (8000, 5001))),
            "Source image 2 is 8000x5001 (40 megapixels); images up to 40 megapixels are accepted.",
        ),
        (
            _with_sources(Image.new("RGB", (64, 64)), mask=Image.new("L", (64, 64), 0), op=Operation.INPAINT),
            "The mask is empty",
        ),
        (
            _with_sources(
                Image.new("RGB", (64, 64)), mask=Image.new("L", (64, 32), 255), op=Operation.INPAINT
            ),
            "The mask is 64x32 but the image is 64x64",
        ),
        (_with_sources(Image.new("RGB", (64, 64)), mask="mask.png"), "There is no file called mask.png."),
    ],
    ids=["not-an-image", "over-the-pixel-limit", "empty-mask", "mask-of-another-shape", "mask-not-an-image"],
)
def test_every_input_image_is_checked_before_any_request(
    server: FakeOpenAI, request_: ImageRequest, fragment: str
) -> None:
    with pytest.raises(InvalidImage) as caught:
        make_backend(server).run(request_)
    assert fragment in caught.value.user_message
    assert server.requests == []


def test_sources_in_other_modes_are_sent_as_rgb_png_with_a_note(server: FakeOpenAI) -> None:
    cmyk = Image.new("RGB", (64, 64), (200, 30, 30)).convert("CMYK")
    grey = Image.new("L", (64, 64), 90)
    result = make_backend(server).run(_with_sources(cmyk, grey))
    first, second = server.requests[0].files_named("image[]")
    assert first.image().mode == "RGB" and second.image().mode == "RGB"
    assert same_pixels(first.image(), cmyk.convert("RGB"))
    assert any("CMYK" in note for note in result.notes)


def test_a_mask_drawn_on_a_smaller_copy_is_fitted_with_a_note(server: FakeOpenAI) -> None:
    small = Image.new("L", (32, 32), 0)
    small.paste(255, (0, 0, 16, 32))  # the left half, drawn on a half-size preview
    result = make_backend(server).run(
        _with_sources(Image.new("RGB", (64, 64)), mask=small, op=Operation.INPAINT)
    )
    [mask_part] = server.requests[0].files_named("mask")
    alpha = mask_part.image().getchannel("A")
    assert alpha.size == (64, 64)
    assert (alpha.getpixel((5, 5)), alpha.getpixel((60, 5))) == (0, 255)
    assert "The mask was 32x32; it was resized to 64x64 to match the image." in result.notes


def test_extended_qualities_on_gpt_image_2_5(server: FakeOpenAI) -> None:
    make_backend(server, "gpt-image-2.5-sunburst").run(gen(options={"quality": "max"}))
    assert server.requests[0].json["quality"] == "max"


@pytest.mark.parametrize("key", [None, "", "   "])
def test_missing_key_fails_before_any_call(server: FakeOpenAI, key: str | None) -> None:
    backend = OpenAIImagesBackend(api_key=key, model="gpt-image-2", base_url=server.base_url)
    with pytest.raises(AuthenticationFailed, match=r"^No OpenAI API key: set OPENAI_API_KEY"):
        backend.run(gen())
    assert server.requests == []


# --------------------------------------------------------------------------- failures → typed errors


def _refused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


ERROR_CASES: list[tuple[str, CannedResponse, type[ToolError], list[str]]] = [
    (
        "401",
        error_response(
            401,
            f"Incorrect API key provided: {SENTINEL}. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            code="invalid_api_key",
        ),
        AuthenticationFailed,
        ["rejected the API key (401)", "Incorrect API key provided: [redacted]"],
    ),
    (
        "403",
        error_response(
            403, "Your organization must be verified to use gpt-image-2.", type="permission_error"
        ),
        AuthenticationFailed,
        ["403 permission denied", "must be verified"],
    ),
    (
        "429",
        error_response(429, "Rate limit reached for images per minute.", headers={"retry-after": "7"}),
        RateLimited,
        ["rate limit was reached (429)", "Try again in 7 s"],
    ),
    (
        "429-quota",
        error_response(
            429, "You exceeded your current quota.", type="insufficient_quota", code="insufficient_quota"
        ),
        RateLimited,
        ["out of credit", "exceeded your current quota"],
    ),
    (
        "moderation",
        error_response(
            400,
            "Your request was rejected by the safety system: violence.",
            type="image_generation_user_error",
            code="moderation_blocked",
        ),
        ContentPolicyViolation,
        ["content policy", "rejected by the safety system: violence."],
    ),
    (
        "content-policy",
        error_response(400, "This request violates our content policy.", code="content_policy_violation"),
        ContentPolicyViolation,
        ["violates our content policy"],
    ),
    (
        "400",
        error_response(400, "Invalid size '1024x1024' for this project.", param="size", code="invalid_value"),
        InvalidRequest,
        ["rejected the request (size)", "Invalid size"],
    ),
    (
        "404",
        error_response(404, "The model `gpt-image-2` does not exist.", code="model_not_found"),
        ModelNotFound,
        ["answered 404", "does not exist"],
    ),
    (
        "500",
        error_response(500, "The server had an error while processing your request.", type="server_error"),
        BackendServerError,
        ["server error (500)"],
    ),
    (
        "not-json",
        CannedResponse(body=b"{definitely not json"),
        BackendServerError,
        ["The image service returned a malformed response", "not valid JSON"],
    ),
    (
        "text-body",
        CannedResponse(body=b"upstream ok", headers={"content-type": "text/plain"}),
        BackendServerError,
        ["malformed response"],
    ),
    (
        "missing-data",
        CannedResponse(body={"created": 1, "usage": usage_block()}),
        BackendServerError,
        ["malformed response", "no image data"],
    ),
    (
        "empty-data",
        CannedResponse(body={"created": 1, "data": []}),
        BackendServerError,
        ["malformed response", "no image data"],
    ),
    (
        "broken-base64",
        CannedResponse(body={"created": 1, "data": [{"b64_json": "@@not base64@@"}]}),
        BackendServerError,
        ["malformed response", "not valid base64"],
    ),
    (
        "base64-not-an-image",
        CannedResponse(body={"created": 1, "data": [{"b64_json": base64.b64encode(b"hello").decode()}]}),
        BackendServerError,
        ["malformed response"],
    ),
    (
        "url-only",
        CannedResponse(body={"created": 1, "data": [{"url": "https://example.com/x.png"}]}),
        BackendServerError,
        ["malformed response", "a URL instead of image data"],
    ),
]


def _assert_no_secret(err: BaseException, caplog: pytest.LogCaptureFixture) -> None:
    rendered = "".join(traceback.format_exception(err))
    for text in (str(err), repr(err), rendered, caplog.text):
        assert SENTINEL not in text
        assert "SENTINEL" not in text
    for record in caplog.records:
        assert "SENTINEL" not in record.getMessage()


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    for name in ("openai", "httpx2", "httpcore2", "tools"):
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


@pytest.mark.parametrize(
    ("case", "canned", "error", "fragments"), ERROR_CASES, ids=[c[0] for c in ERROR_CASES]
)
def test_failures_become_typed_readable_key_free_errors(
    server: FakeOpenAI,
    debug_logs: pytest.LogCaptureFixture,
    case: str,
    canned: CannedResponse,
    error: type[ToolError],
    fragments: list[str],
) -> None:
    server.enqueue(GENERATIONS, canned)
    with pytest.raises(error) as caught:
        make_backend(server).run(gen())
    for fragment in fragments:
        assert fragment in caught.value.user_message
    # nothing chained that a traceback would print (SDK errors carry the request and its headers)
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None or caught.value.__suppress_context__
    assert any(r.name.startswith("openai") for r in debug_logs.records)  # the SDK's debug log was captured
    _assert_no_secret(caught.value, debug_logs)


@pytest.mark.parametrize(
    ("case", "canned", "error", "fragments"), ERROR_CASES, ids=[c[0] for c in ERROR_CASES]
)
def test_edit_failures_become_the_same_typed_errors(
    server: FakeOpenAI,
    debug_logs: pytest.LogCaptureFixture,
    case: str,
    canned: CannedResponse,
    error: type[ToolError],
    fragments: list[str],
) -> None:
    """The edits endpoint (multipart in, same JSON out) fails exactly as readably as generations."""
    server.enqueue(EDITS, canned)
    with pytest.raises(error) as caught:
        make_backend(server).run(edit(side=64))
    for fragment in fragments:
        assert fragment in caught.value.user_message
    assert caught.value.__cause__ is None
    assert server.requests_to(EDITS) and not server.requests_to(GENERATIONS)
    _assert_no_secret(caught.value, debug_logs)


def test_moderation_reason_is_kept(server: FakeOpenAI) -> None:
    server.enqueue(GENERATIONS, error_response(400, "Flagged: graphic violence.", code="moderation_blocked"))
    with pytest.raises(ContentPolicyViolation) as caught:
        make_backend(server).run(gen())
    assert caught.value.reason == "Flagged: graphic violence."


@pytest.mark.parametrize(
    ("headers", "expected"),
    [({"retry-after": "7"}, 7.0), ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5), ({}, None)],
)
def test_rate_limit_retry_after(server: FakeOpenAI, headers: dict[str, str], expected: float | None) -> None:
    server.enqueue(GENERATIONS, error_response(429, "Slow down.", headers=headers))
    with pytest.raises(RateLimited) as caught:
        make_backend(server).run(gen())
    assert caught.value.retry_after == expected


def test_timeout(server: FakeOpenAI, debug_logs: pytest.LogCaptureFixture) -> None:
    server.enqueue(GENERATIONS, CannedResponse(delay=3.0, body={"created": 1}))
    with pytest.raises(BackendTimeout) as caught:
        make_backend(server, timeout=0.3).run(gen())
    assert "did not answer within 0.3 s" in caught.value.user_message
    assert f"127.0.0.1:{server.port}" in caught.value.user_message
    _assert_no_secret(caught.value, debug_logs)


def test_connection_refused(debug_logs: pytest.LogCaptureFixture) -> None:
    port = _refused_port()
    backend = OpenAIImagesBackend(
        api_key=SENTINEL,
        model="gpt-image-2",
        base_url=f"http://127.0.0.1:{port}/v1",
        max_retries=0,
        timeout=2,
    )
    with pytest.raises(BackendUnreachable) as caught:
        backend.run(gen())
    assert f"Cannot reach the image service at 127.0.0.1:{port}" in caught.value.user_message
    _assert_no_secret(caught.value, debug_logs)


def test_base_url_credentials_never_shown(server: FakeOpenAI) -> None:
    backend = OpenAIImagesBackend(
        api_key=SENTINEL,
        model="gpt-image-2",
        base_url=f"http://user:{SENTINEL}@127.0.0.1:{_refused_port()}/v1",
        max_retries=0,
        timeout=2,
    )
    with pytest.raises(BackendUnreachable) as caught:
        backend.run(gen())
    assert SENTINEL not in caught.value.user_message and SENTINEL not in repr(backend)


def test_unusable_base_url() -> None:
    backend = OpenAIImagesBackend(api_key=SENTINEL, model="gpt-image-2", base_url=f"http://u:{SENTINEL}@[::1")
    with pytest.raises(BackendUnreachable, match="not a usable URL") as caught:
        backend.run(gen())
    assert SENTINEL not in caught.value.user_message


def test_sdk_retries_a_500_then_succeeds(server: FakeOpenAI, debug_logs: pytest.LogCaptureFixture) -> None:
    server.enqueue(
        GENERATIONS,
        error_response(500, "Temporary failure.", type="server_error", headers={"retry-after-ms": "10"}),
    )
    result = make_backend(server, max_retries=1, timeout=2.0).run(gen())
    first, second = server.requests
    assert first.response is not None and first.response.status == 500
    assert second.header("x-stainless-retry-count") == "1"
    assert same_pixels(result.images[0].image, sent_images(second)[0])
    assert server.pending(GENERATIONS) == 0
    assert SENTINEL not in debug_logs.text


# --------------------------------------------------------------------------- the overall deadline


def _always(status: int, message: str, times: list[float], **headers: str) -> Any:
    """A route handler that answers every request with the same error and notes when it came."""

    def handler(request: RecordedRequest) -> CannedResponse:
        times.append(time.monotonic())
        return error_response(status, message, type="server_error", headers=headers)

    return handler


@pytest.mark.parametrize(
    ("status", "error", "fragment"),
    [
        (429, RateLimited, "rate limit was reached (429)"),
        (500, BackendServerError, "server error (500)"),
    ],
)
def test_retries_with_retry_after_stop_at_the_overall_deadline(
    server: FakeOpenAI,
    debug_logs: pytest.LogCaptureFixture,
    status: int,
    error: type[ToolError],
    fragment: str,
) -> None:
    """A server that keeps saying "try again in 1 s" gets 3.5 s in all, not 10 retries' worth."""
    times: list[float] = []
    server.route("POST", GENERATIONS, _always(status, "Busy, try later.", times, **{"retry-after": "1"}))
    backend = make_backend(server, max_retries=10, timeout=5.0, total_timeout=3.5)

    started = time.monotonic()
    with pytest.raises(error) as caught:
        backend.run(gen())
    elapsed = time.monotonic() - started

    assert elapsed < 3.5 + 1.0  # without the deadline: 11 tries and 10 s of waiting
    tries = len(server.requests)
    assert 2 <= tries <= 4
    assert all(later - earlier >= 0.95 for earlier, later in itertools.pairwise(times))
    assert [r.header("x-stainless-retry-count") for r in server.requests] == [str(i) for i in range(tries)]
    message = caught.value.user_message
    assert fragment in message and "Busy, try later." in message
    assert f"Gave up after {tries} tries in " in message
    assert message.endswith("the 3.5 s limit for one request leaves no time for another try.")
    if isinstance(caught.value, RateLimited):
        assert caught.value.retry_after == 1.0
    _assert_no_secret(caught.value, debug_logs)


def test_a_retry_after_beyond_the_deadline_is_not_waited_for(server: FakeOpenAI) -> None:
    times: list[float] = []
    server.route("POST", GENERATIONS, _always(429, "Slow down.", times, **{"retry-after": "30"}))
    started = time.monotonic()
    with pytest.raises(RateLimited) as caught:
        make_backend(server, max_retries=5, total_timeout=5.0).run(gen())
    assert time.monotonic() - started < 2.0
    assert len(server.requests) == 1
    assert caught.value.retry_after == 30.0
    assert "Try again in 30 seconds." in caught.value.user_message
    assert "Gave up after 1 try in " in caught.value.user_message


def test_a_slow_server_is_cut_off_at_the_overall_deadline(server: FakeOpenAI) -> None:
    """Each try gets min(timeout, time left): a 5 s per-try timeout cannot outlast a 1.5 s deadline."""
    server.route("POST", GENERATIONS, lambda request: CannedResponse(delay=10.0, body={"created": 1}))
    started = time.monotonic()
    with pytest.raises(BackendTimeout) as caught:
        make_backend(server, max_retries=5, timeout=5.0, total_timeout=1.5).run(gen())
    assert time.monotonic() - started < 1.5 + 1.0
    assert len(server.requests) == 1
    assert "did not answer within 1.5 s" in caught.value.user_message
    assert "Gave up after 1 try in " in caught.value.user_message
    assert caught.value.user_message.endswith("the 1.5 s limit for one request ran out.")


def test_retries_stop_after_max_retries_within_the_deadline(server: FakeOpenAI) -> None:
    times: list[float] = []
    server.route("POST", GENERATIONS, _always(500, "Oops.", times, **{"retry-after-ms": "10"}))
    with pytest.raises(BackendServerError) as caught:
        make_backend(server, max_retries=2, total_timeout=30.0).run(gen())
    assert len(server.requests) == 3
    assert "Gave up" not in caught.value.user_message  # the retries ran out, not the time


@pytest.mark.parametrize(
    ("canned", "why"),
    [
        (
            error_response(429, "Quota.", type="insufficient_quota", code="insufficient_quota"),
            "waiting adds no credit",
        ),
        (error_response(500, "Broken.", headers={"x-should-retry": "false"}), "the server says so"),
        (error_response(400, "Bad size.", param="size"), "the request itself is wrong"),
        (error_response(429, "Later.", headers={"retry-after": "600"}), "longer than the SDK would wait"),
    ],
)
def test_failures_a_retry_cannot_fix_are_not_retried(
    server: FakeOpenAI, canned: CannedResponse, why: str
) -> None:
    server.route("POST", GENERATIONS, lambda request: canned)
    with pytest.raises(ToolError):
        make_backend(server, max_retries=3).run(gen())
    assert len(server.requests) == 1, why


def test_cancel_interrupts_a_retry_wait(server: FakeOpenAI) -> None:
    times: list[float] = []
    server.route("POST", GENERATIONS, _always(429, "Slow down.", times, **{"retry-after": "60"}))
    token = CancelToken()
    timer = threading.Timer(0.3, token.cancel)
    timer.start()
    started = time.monotonic()
    try:
        with pytest.raises(Cancelled):
            make_backend(server, max_retries=2).run(gen(), cancel=token)
    finally:
        timer.cancel()
    assert time.monotonic() - started < 2.0
    assert len(server.requests) == 1


def test_the_default_deadline_is_a_few_minutes() -> None:
    backend = OpenAIImagesBackend(api_key=SENTINEL, model="gpt-image-2")
    assert backend.total_timeout == DEFAULT_TOTAL_TIMEOUT == 300.0
    assert backend.timeout < backend.total_timeout


@pytest.mark.parametrize("limits", [{"total_timeout": 0}, {"timeout": -1}, {"max_retries": -1}])
def test_nonsense_time_limits_are_refused_before_any_call(server: FakeOpenAI, limits: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest, match="time limits must be positive"):
        make_backend(server, **limits).run(gen())
    assert server.requests == []


# --------------------------------------------------------------------------- helpers


def test_scrub_removes_keys() -> None:
    assert scrub(f"bad key {SENTINEL}!", SENTINEL) == "bad key [redacted]!"
    assert scrub("key sk-proj-abc123XYZ and Bearer tok.en") == "key [redacted] and [redacted]"


def test_estimate_cost() -> None:
    usage = usage_block(text_in=1_000_000, image_in=1_000_000, image_out=1_000_000)
    assert estimate_cost("gpt-image-1.5", usage) == pytest.approx(5.00 + 8.00 + 32.00)
    assert estimate_cost(
        "gpt-image-1-mini", {"input_tokens": 1_000_000, "output_tokens": 0}
    ) == pytest.approx(2.0)
    assert estimate_cost("gpt-image-2.6-flare", usage) is None  # no price known
    assert estimate_cost("gpt-image-2", None) is None
    assert estimate_cost("gpt-image-2", {"input_tokens": "many"}) is None


def test_estimate_before_the_call_errs_high_and_follows_quality_size_and_n() -> None:
    """gpt-image-2 outputs cost $30 per 1M tokens; a 1024² high image is 4,160 tokens (≈ $0.125)."""
    high = estimate_request_cost("gpt-image-2", gen(options={"quality": "high"}))
    assert high == pytest.approx(4160 * 30 / 1e6, rel=0.01)
    assert estimate_request_cost("gpt-image-2", gen()) == high  # the server's 'auto' may choose high
    low = estimate_request_cost("gpt-image-2", gen(options={"quality": "low"}))
    medium = estimate_request_cost("gpt-image-2", gen(options={"quality": "medium"}))
    assert low is not None and medium is not None and low < medium < high
    assert estimate_request_cost("gpt-image-2", gen(n=3)) == pytest.approx(3 * high, rel=0.01)
    assert estimate_request_cost("gpt-image-2", gen(width=256, height=256)) == high  # never below 1024²
    wide = estimate_request_cost("gpt-image-2", gen(width=2048, height=1024))
    assert wide == pytest.approx(2 * high, rel=0.01)
    with_source = estimate_request_cost("gpt-image-2", edit(side=1024))
    assert with_source is not None and with_source > high  # the source image is paid for as input
    assert estimate_request_cost("gpt-image-2.6-flare", gen()) is None  # no price known, no guess
    with pytest.raises(InvalidRequest, match="quality='ultra' is not accepted"):
        estimate_request_cost("gpt-image-2", gen(options={"quality": "ultra"}))


def test_the_backend_default_quality_is_sent_and_priced(server: FakeOpenAI) -> None:
    backend = make_backend(server, quality="low")
    assert backend.estimate_cost(gen()) == estimate_request_cost(
        "gpt-image-2", gen(options={"quality": "low"})
    )
    backend.run(gen())
    (request,) = server.requests_to(GENERATIONS)
    assert request.json["quality"] == "low"
    assert make_backend(server, quality="low").estimate_cost(gen(options={"quality": "high"})) == (
        estimate_request_cost("gpt-image-2", gen(options={"quality": "high"}))
    )  # a request's own quality wins


# --------------------------------------------------------------------------- the fake's chat route


def test_fake_server_chat_completions_route_works_with_the_sdk(server: FakeOpenAI) -> None:
    """The agent's tests will extend this route; this shows the scripted JSON and SSE forms parse."""
    client = openai.OpenAI(api_key=SENTINEL, base_url=server.base_url, max_retries=0)
    call = tool_call("generate_image", {"prompt": "a fox"}, call_id="call_1")
    server.enqueue(CHAT_COMPLETIONS, chat_completion(tool_calls=[call]))
    reply = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    tool_calls = reply.choices[0].message.tool_calls
    assert tool_calls is not None and tool_calls[0].id == "call_1"
    assert server.requests[0].json["messages"][0]["content"] == "hi"

    server.enqueue(CHAT_COMPLETIONS, chat_completion_stream(["Hel", "lo"]))
    stream = client.chat.completions.create(model="m", messages=[], stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == "Hello"


def test_fake_server_multipart_keeps_bytes_exact(server: FakeOpenAI) -> None:
    """PNG signatures contain CR LF; the multipart parser must not normalise line endings."""
    client = openai.OpenAI(api_key=SENTINEL, base_url=server.base_url, max_retries=0)
    data = png_bytes(16, 16) + b"\r\n\r\n--trailing\r\n"
    client.images.edit(model="gpt-image-2", prompt="x", image=("a.png", data, "image/png"))
    assert server.requests[0].files == [FilePart("image", "a.png", "image/png", data)]
