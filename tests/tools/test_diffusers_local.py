"""The diffusers adapter against a tiny random-weight SD 1.5-shaped pipeline saved to tmp_path.

Everything goes through the real loading path (`from_pretrained(local_files_only=True)` on a
folder) with the hub switched off. Images are 64×64 (8×8 latents) with 2–4 steps, so a call
takes a few tens of milliseconds; most of the module's time is importing torch and diffusers.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.tools.tiny_pipeline import save_tiny_sd
from tools import diffusers_local as dl
from tools.base import (
    Cancelled,
    CancelToken,
    ImageBackend,
    ImageRequest,
    ImageResult,
    InvalidImage,
    InvalidRequest,
    ModelNotFound,
    Operation,
    OutOfMemory,
    UnsupportedOperation,
)

pytestmark = pytest.mark.slow

pytest.importorskip("diffusers")
pytest.importorskip("torch")


@pytest.fixture(scope="module")
def offline() -> Iterator[None]:
    """No test here may reach the hub; the loads below are `local_files_only` as well."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        yield


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, offline: None) -> Iterator[Path]:
    yield save_tiny_sd(tmp_path_factory.mktemp("models") / "tiny-sd")
    dl.clear_cache()  # give the memory back to the rest of the test run


@pytest.fixture(scope="module")
def backend(tiny_model: Path) -> dl.DiffusersBackend:
    return dl.DiffusersBackend(str(tiny_model), local_files_only=True)


@pytest.fixture(scope="module")
def source(backend: dl.DiffusersBackend) -> Image.Image:
    """A 64×64 picture to edit: a red square on blue, so img2img has structure to keep."""
    image = Image.new("RGB", (64, 64), (30, 60, 200))
    image.paste((220, 40, 40), (16, 16, 48, 48))
    return image


def request(op: Operation = Operation.GENERATE, **kwargs: Any) -> ImageRequest:
    defaults: dict[str, Any] = {
        "prompt": "a red fox in the snow",
        "width": 64,
        "height": 64,
        "steps": 2,
        "seed": 7,
    }
    return ImageRequest(operation=op, **{**defaults, **kwargs})


def pixels(result: ImageResult, i: int = 0) -> np.ndarray:
    return np.asarray(result.images[i].image)


def left_half_mask(size: tuple[int, int]) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, (0, 0, size[0] // 2, size[1]))
    return mask


# -- the three operations --------------------------------------------------------------------


def test_is_an_image_backend(backend: dl.DiffusersBackend) -> None:
    assert isinstance(backend, ImageBackend)
    assert backend.name == "diffusers"
    assert backend.capabilities == {
        Operation.GENERATE,
        Operation.IMG2IMG,
        Operation.INPAINT,
        Operation.VARIATION,
        Operation.EDIT,
    }
    assert (backend.device, backend.dtype) == ("cpu", "float32")


def test_txt2img_returns_requested_size(backend: dl.DiffusersBackend) -> None:
    result = backend.run(request(width=128, height=64))
    assert [g.image.size for g in result.images] == [(128, 64)]
    assert result.images[0].image.mode == "RGB"
    assert result.backend == "diffusers"
    assert result.params["pipeline"] == "StableDiffusionPipeline"
    assert result.params["width"] == 128 and result.params["height"] == 64
    assert result.notes == []


def test_img2img_returns_requested_size(backend: dl.DiffusersBackend, source: Image.Image) -> None:
    result = backend.run(request(Operation.IMG2IMG, width=64, height=128, steps=4, sources=(source,)))
    assert result.images[0].image.size == (64, 128)
    assert result.params["pipeline"] == "StableDiffusionImg2ImgPipeline"
    assert result.params["strength"] == dl.DEFAULT_STRENGTH[Operation.IMG2IMG]


def test_inpaint_returns_requested_size(backend: dl.DiffusersBackend, source: Image.Image) -> None:
    # the UNet's own default is 256×256 (sample_size 32 × 8): the size must be passed through
    mask = left_half_mask(source.size)
    result = backend.run(request(Operation.INPAINT, width=128, height=64, sources=(source,), mask=mask))
    assert result.images[0].image.size == (128, 64)
    assert result.params["pipeline"] == "StableDiffusionInpaintPipeline"


def test_variation_and_edit_are_img2img(backend: dl.DiffusersBackend, source: Image.Image) -> None:
    variation = backend.run(request(Operation.VARIATION, steps=4, sources=(source,)))
    edit = backend.run(request(Operation.EDIT, prompt="make it night", steps=4, sources=(source,)))
    assert variation.params["pipeline"] == edit.params["pipeline"] == "StableDiffusionImg2ImgPipeline"
    assert variation.params["strength"] == 0.5
    assert edit.params["strength"] == dl.DEFAULT_STRENGTH[Operation.EDIT]
    masked = backend.run(
        request(Operation.EDIT, steps=4, sources=(source,), mask=left_half_mask(source.size))
    )
    assert masked.params["pipeline"] == "StableDiffusionInpaintPipeline"


def test_components_are_loaded_once_for_all_operations(tiny_model: Path, source: Image.Image) -> None:
    dl.clear_cache()
    backend = dl.DiffusersBackend(str(tiny_model), local_files_only=True)
    backend.run(request())
    backend.run(request(Operation.IMG2IMG, steps=4, sources=(source,)))
    backend.run(request(Operation.INPAINT, sources=(source,), mask=left_half_mask(source.size)))
    # a second backend object for the same model reuses the process cache too
    dl.DiffusersBackend(str(tiny_model), local_files_only=True, scheduler="euler").run(request())

    info = dl.cache_info()
    assert info.loads == 1 and len(info.models) == 1
    loaded = backend.load()
    pipes = [loaded.pipeline(kind) for kind in ("text2img", "img2img", "inpaint")]
    assert len({type(p) for p in pipes}) == 3
    for component in ("unet", "vae", "text_encoder", "tokenizer"):
        assert len({id(getattr(p, component)) for p in pipes}) == 1, component
    assert loaded.pipeline("img2img") is pipes[1]  # made once, then reused


# -- seeds ---------------------------------------------------------------------------------


def test_same_seed_same_pixels_different_seed_different(backend: dl.DiffusersBackend) -> None:
    a, b = backend.run(request(seed=11)), backend.run(request(seed=11))
    c = backend.run(request(seed=12))
    assert a.images[0].seed == 11
    assert np.array_equal(pixels(a), pixels(b))
    assert not np.array_equal(pixels(a), pixels(c))
    assert a.params["generator"] == "torch.Generator" and a.params["generator_device"] == "cpu"


def test_same_seed_replays_img2img(backend: dl.DiffusersBackend, source: Image.Image) -> None:
    runs = [backend.run(request(Operation.VARIATION, steps=4, seed=3, sources=(source,))) for _ in range(2)]
    other = backend.run(request(Operation.VARIATION, steps=4, seed=4, sources=(source,)))
    assert np.array_equal(pixels(runs[0]), pixels(runs[1]))
    assert not np.array_equal(pixels(runs[0]), pixels(other))


def test_batch_seeds_follow_and_each_replays_alone(backend: dl.DiffusersBackend) -> None:
    """Image i of a batch has its own generator seeded s+i, so it replays on its own.

    The same request replays bit for bit. Alone, the noise is the same but the matmuls run at
    another batch size, and BLAS may block them differently: a pixel can land one level off.
    """
    batch = backend.run(request(n=2, seed=40))
    assert [g.seed for g in batch.images] == [40, 41]
    assert batch.params["seeds"] == [40, 41] and batch.params["batch_size"] == 2
    assert not np.array_equal(pixels(batch, 0), pixels(batch, 1))
    again = backend.run(request(n=2, seed=40))
    assert all(np.array_equal(pixels(batch, i), pixels(again, i)) for i in range(2))
    for i, seed in enumerate((40, 41)):
        alone = pixels(backend.run(request(seed=seed))).astype(int)
        diff = np.abs(alone - pixels(batch, i).astype(int))
        assert diff.max() <= 2 and diff.mean() < 0.05, (seed, diff.max(), diff.mean())


def test_missing_seed_is_chosen_and_recorded(backend: dl.DiffusersBackend) -> None:
    result = backend.run(request(seed=None))
    seed = result.images[0].seed
    assert seed is not None and 0 <= seed < 2**32
    assert np.array_equal(pixels(result), pixels(backend.run(request(seed=seed))))


# -- sizes, samplers, progress, cancel ---------------------------------------------------------


def test_size_is_rounded_down_with_a_note(backend: dl.DiffusersBackend) -> None:
    result = backend.run(request(width=70, height=70))
    assert result.images[0].image.size == (64, 64)
    assert (result.params["width"], result.params["height"]) == (64, 64)
    assert len(result.notes) == 1 and "64×64" in result.notes[0] and "70×70" in result.notes[0]


def test_source_is_brought_to_the_requested_size(backend: dl.DiffusersBackend) -> None:
    wide = Image.new("RGB", (96, 64), (10, 120, 10))
    result = backend.run(request(Operation.VARIATION, steps=4, sources=(wide,)))
    assert result.images[0].image.size == (64, 64)
    assert any("96×64 source was stretched to 64×64" in note for note in result.notes)


def test_long_prompt_and_foreign_noise_are_noted(backend: dl.DiffusersBackend) -> None:
    result = backend.run(request(prompt="a fox " * 40, options={"generator_device": "cuda"}))
    assert any("longer than the 77 tokens" in note for note in result.notes)
    assert any("first drawn on a CUDA GPU" in note for note in result.notes)
    assert result.params["generator_device"] == "cpu"


def test_scheduler_by_name(backend: dl.DiffusersBackend, tiny_model: Path) -> None:
    default = backend.run(request(steps=3))
    euler_a = backend.run(request(steps=3, options={"scheduler": "Euler a"}))
    assert (default.params["sampler"], default.params["scheduler"]) == ("ddim", "DDIMScheduler")
    assert (euler_a.params["sampler"], euler_a.params["scheduler"]) == (
        "euler_a",
        "EulerAncestralDiscreteScheduler",
    )
    assert not np.array_equal(pixels(default), pixels(euler_a))
    assert type(backend.load().pipeline("text2img").scheduler).__name__ == "EulerAncestralDiscreteScheduler"

    dpm = dl.DiffusersBackend(str(tiny_model), local_files_only=True, scheduler="dpm++ 2m karras")
    result = dpm.run(request(steps=3))
    assert (result.params["sampler"], result.params["scheduler"]) == (
        "dpm++_karras",
        "DPMSolverMultistepScheduler",
    )
    # the model's own scheduler is untouched by per-request choices
    assert type(backend.load().base_scheduler).__name__ == "DDIMScheduler"


def test_progress_counts_steps(backend: dl.DiffusersBackend, source: Image.Image) -> None:
    events: list[tuple[int, int]] = []
    backend.run(request(steps=4), progress=lambda step, total: events.append((step, total)))
    assert events == [(1, 4), (2, 4), (3, 4), (4, 4)]

    events.clear()  # img2img at strength 0.5 runs half the steps, and says so
    backend.run(
        request(Operation.VARIATION, steps=4, sources=(source,)), progress=lambda s, t: events.append((s, t))
    )
    assert events == [(1, 2), (2, 2)]


def test_cancel_stops_between_steps(backend: dl.DiffusersBackend) -> None:
    token = CancelToken()
    events: list[tuple[int, int]] = []

    def on_progress(step: int, total: int) -> None:
        events.append((step, total))
        if step == 1:
            token.cancel()

    with pytest.raises(Cancelled):
        backend.run(request(steps=4), progress=on_progress, cancel=token)
    assert events == [(1, 4)]

    with pytest.raises(Cancelled):  # cancelled before it started: no step runs
        backend.run(request(steps=4), progress=on_progress, cancel=token)
    assert events == [(1, 4)]
    # the pipeline is usable again afterwards
    assert len(backend.run(request()).images) == 1


# -- errors ---------------------------------------------------------------------------------


def test_missing_folder(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ModelNotFound, match=r"Model folder .*nope does not exist"):
        dl.DiffusersBackend(str(missing))


def test_folder_without_unet(tiny_model: Path, tmp_path: Path) -> None:
    broken = shutil.copytree(tiny_model, tmp_path / "broken")
    shutil.rmtree(broken / "unet")
    with pytest.raises(ModelNotFound, match="is not a complete diffusers model: missing unet"):
        dl.DiffusersBackend(str(broken))

    index = json.loads((broken / "model_index.json").read_text())
    del index["unet"]
    (broken / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelNotFound, match="missing unet"):
        dl.DiffusersBackend(str(broken))

    (broken / "model_index.json").unlink()
    with pytest.raises(ModelNotFound, match=r"missing model_index\.json"):
        dl.DiffusersBackend(str(broken))


@pytest.mark.parametrize("index", ["[1, 2]", "null", '"unet"'])
def test_a_model_index_that_lists_no_components_is_named(
    tiny_model: Path, tmp_path: Path, index: str
) -> None:
    broken = shutil.copytree(tiny_model, tmp_path / "broken")
    (broken / "model_index.json").write_text(index)
    with pytest.raises(ModelNotFound, match=r"model_index\.json is not an object of components"):
        dl.DiffusersBackend(str(broken))


def test_a_config_value_of_the_wrong_type_is_a_load_error_not_a_crash(
    tiny_model: Path, tmp_path: Path
) -> None:
    broken = shutil.copytree(tiny_model, tmp_path / "broken")
    config_file = broken / "unet" / "config.json"
    config = json.loads(config_file.read_text())
    config["in_channels"] = "x"
    config_file.write_text(json.dumps(config))
    backend = dl.DiffusersBackend(str(broken), local_files_only=True)  # the folder itself is complete
    with pytest.raises(ModelNotFound, match=r"a config\.json in it has a missing or wrong-typed value"):
        backend.run(request())


def test_offload_asked_for_on_the_cpu_is_said_once_not_silently_dropped(tiny_model: Path) -> None:
    backend = dl.DiffusersBackend(str(tiny_model), local_files_only=True, device="cpu", enable_offload=True)
    note = "CPU offload is for CUDA GPUs; on cpu the model already runs from RAM, so it is off."
    assert note in backend.run(request()).notes
    assert note not in backend.run(request()).notes
    assert "offload" not in backend.run(request()).params


def test_hub_id_when_offline() -> None:
    with pytest.raises(ModelNotFound, match="not in the Hugging Face cache") as info:
        dl.DiffusersBackend("nobody/no-such-model", local_files_only=True)
    assert "offline" in info.value.user_message


# -- every image is checked where it enters ------------------------------------------------


def _truncated_png() -> Image.Image:
    """A PNG cut off half way, opened lazily as a stored file would be: it fails only on load."""
    buffer = io.BytesIO()
    Image.effect_noise((64, 64), 60).convert("RGB").save(buffer, format="PNG")
    return Image.open(io.BytesIO(buffer.getvalue()[: buffer.tell() // 2]))


@pytest.mark.parametrize(
    ("sources", "mask", "message"),
    [
        pytest.param(
            ("not a picture",), None, r"The source image is not an image \(it is a str\)", id="not-an-image"
        ),
        pytest.param(lambda: (_truncated_png(),), None, "truncated or damaged", id="damaged-source"),
        pytest.param(
            lambda: (Image.new("RGB", (64, 64)),),
            lambda: Image.new("L", (64, 32), 255),
            r"mask is 64x32 but the image is 64x64; their shapes differ",
            id="mask-of-another-shape",
        ),
        pytest.param(
            lambda: (Image.new("RGB", (64, 64)),),
            lambda: Image.new("L", (64, 64), 0),
            "The mask is empty: nothing is marked to change",
            id="empty-mask",
        ),
        pytest.param(
            lambda: (Image.new("RGB", (64, 64)),), lambda: "mask.png", "mask.png", id="mask-not-a-file"
        ),
    ],
)
def test_bad_images_fail_with_a_clear_message_before_work(
    backend: dl.DiffusersBackend, sources: Any, mask: Any, message: str
) -> None:
    sources = sources() if callable(sources) else sources
    mask_image = mask() if callable(mask) else mask
    op = Operation.INPAINT if mask_image is not None else Operation.IMG2IMG
    with pytest.raises(InvalidImage, match=message):
        backend.run(request(op, sources=sources, mask=mask_image))


def test_a_mask_drawn_on_a_scaled_copy_is_fitted_to_the_source(
    backend: dl.DiffusersBackend, source: Image.Image
) -> None:
    small = left_half_mask((32, 32))
    result = backend.run(request(Operation.INPAINT, sources=(source,), mask=small))
    assert result.images[0].image.size == (64, 64)
    assert "The mask was 32x32; it was resized to 64x64 to match the image." in result.notes
    # the same area as the full-size mask: identical pixels
    full = backend.run(request(Operation.INPAINT, sources=(source,), mask=left_half_mask((64, 64))))
    assert np.array_equal(pixels(result), pixels(full))


def test_sources_of_any_mode_become_rgb(backend: dl.DiffusersBackend, source: Image.Image) -> None:
    grey = backend.run(request(Operation.VARIATION, steps=4, sources=(source.convert("L"),)))
    palette = backend.run(request(Operation.VARIATION, steps=4, sources=(source.convert("P"),)))
    assert grey.images[0].image.mode == palette.images[0].image.mode == "RGB"
    assert grey.notes == palette.notes == []

    see_through = source.convert("RGBA")
    see_through.putalpha(0)
    on_white = Image.new("RGB", source.size, (255, 255, 255))
    flattened = backend.run(request(Operation.VARIATION, steps=4, sources=(see_through,)))
    assert "The source image has transparent areas; they were filled with white." in flattened.notes
    white = backend.run(request(Operation.VARIATION, steps=4, sources=(on_white,)))
    assert np.array_equal(pixels(flattened), pixels(white))  # not the black hidden under the alpha

    deep = Image.fromarray((np.asarray(source.convert("L"), dtype=np.uint16) * 257).astype(np.uint16))
    sixteen = backend.run(request(Operation.VARIATION, steps=4, sources=(deep,)))
    assert any("more than 8 bits" in note for note in sixteen.notes)


def test_a_mask_on_an_operation_without_one_is_noted(
    backend: dl.DiffusersBackend, source: Image.Image
) -> None:
    result = backend.run(
        request(Operation.VARIATION, steps=4, sources=(source,), mask=left_half_mask(source.size))
    )
    assert result.params["pipeline"] == "StableDiffusionImg2ImgPipeline"
    assert "A variation changes the whole image; the mask was ignored." in result.notes


def test_unknown_scheduler_name(backend: dl.DiffusersBackend, tiny_model: Path) -> None:
    with pytest.raises(InvalidRequest, match=r"Unknown sampler 'warp-drive'.*euler_a"):
        dl.DiffusersBackend(str(tiny_model), local_files_only=True, scheduler="warp-drive")
    with pytest.raises(InvalidRequest, match="Unknown sampler"):
        backend.run(request(options={"scheduler": "warp-drive"}))


@pytest.mark.parametrize(
    ("req", "message"),
    [
        (request(prompt="  "), "prompt is empty"),
        (request(Operation.IMG2IMG), "needs a source image"),
        (request(Operation.INPAINT, sources=(Image.new("RGB", (64, 64)),)), "needs a mask"),
        (request(n=0), "1 to 8 images"),
        (request(steps=0), "Steps must be"),
        (request(guidance=-1.0), "Guidance must be"),
        (request(Operation.IMG2IMG, sources=(Image.new("RGB", (64, 64)),), strength=1.5), "Strength"),
        (
            request(Operation.IMG2IMG, sources=(Image.new("RGB", (64, 64)),), steps=1, strength=0.5),
            "no denoising",
        ),
        (request(seed=-1), "Seeds are whole numbers"),
    ],
)
def test_bad_requests_fail_before_work(backend: dl.DiffusersBackend, req: ImageRequest, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        backend.run(req)


def test_bad_device_and_dtype(tiny_model: Path) -> None:
    with pytest.raises(InvalidRequest, match="float16 needs a GPU"):
        dl.DiffusersBackend(str(tiny_model), device="cpu", dtype="fp16")
    with pytest.raises(InvalidRequest, match="Unknown device"):
        dl.DiffusersBackend(str(tiny_model), device="tpu")


def test_fp8_is_refused_off_nvidia_gpus_before_any_load(tiny_model: Path) -> None:
    loads = dl.cache_info().loads
    with pytest.raises(InvalidRequest, match=r"FP8 runs on NVIDIA GPUs only.*runs on cpu"):
        dl.DiffusersBackend(str(tiny_model), device="cpu", fp8=True)
    assert dl.cache_info().loads == loads


@dataclass
class UnetCall:
    """What the UNet saw on one call: the batch, and the memory savers in force."""

    thread: int
    batch: int
    sliced_attention: bool
    vae_tiled: bool
    vae_sliced: bool


@contextmanager
def unet_out_of_memory(
    loaded: dl.LoadedModel, fail: Callable[[UnetCall], bool], log: list[str] | None = None
) -> Iterator[list[UnetCall]]:
    """Wrap the shared UNet's forward: record each call, and raise CUDA's OOM where `fail` says."""
    import torch

    unet, vae = loaded.unet, loaded.base.vae
    real = unet.forward
    calls: list[UnetCall] = []

    def forward(sample: Any, *args: Any, **kwargs: Any) -> Any:
        call = UnetCall(
            thread=threading.get_ident(),
            batch=sample.shape[0],
            sliced_attention=any("Sliced" in type(p).__name__ for p in unet.attn_processors.values()),
            vae_tiled=bool(vae.use_tiling),
            vae_sliced=bool(vae.use_slicing),
        )
        calls.append(call)
        if log is not None:
            log.append(f"unet ×{call.batch}{' sliced' if call.sliced_attention else ''}")
        if fail(call):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(sample, *args, **kwargs)

    unet.forward = forward
    try:
        yield calls
    finally:
        del unet.forward  # the class's forward again


def test_out_of_memory_retries_once_one_image_at_a_time_with_slicing_and_tiling(
    backend: dl.DiffusersBackend,
) -> None:
    expected = [pixels(backend.run(request(seed=s))) for s in (50, 51)]
    loaded = backend.load()
    events: list[tuple[int, int]] = []
    # 2 images with guidance: the UNet sees a batch of 4, which "does not fit"
    with unet_out_of_memory(loaded, lambda call: call.batch > 2) as calls:
        result = backend.run(request(n=2, seed=50), progress=lambda s, t: events.append((s, t)))

    first, *retry = calls
    assert (first.batch, first.sliced_attention, first.vae_tiled) == (4, False, False)
    # one retry: each image alone (batch 2 = one image with CFG), 2 steps each, everything sliced
    assert len(retry) == 4
    assert all(c.batch == 2 and c.sliced_attention and c.vae_tiled and c.vae_sliced for c in retry)
    assert {c.thread for c in calls} == {loaded.worker.ident}
    assert [g.seed for g in result.images] == [50, 51]
    # sliced attention sums in another order: the same images, give or take one level
    for i in range(2):
        assert np.abs(pixels(result, i).astype(int) - expected[i].astype(int)).max() <= 2
    assert "Ran out of GPU memory; made the images one at a time with sliced attention and a tiled VAE." in (
        result.notes
    )
    assert result.params["low_memory"] is True
    assert events == [(1, 4), (2, 4), (3, 4), (4, 4)]
    # the fast settings are back once the retry is over
    assert not any("Sliced" in type(p).__name__ for p in loaded.unet.attn_processors.values())
    assert not loaded.base.vae.use_tiling and not loaded.base.vae.use_slicing
    assert "low_memory" not in backend.run(request(seed=50)).params

    with unet_out_of_memory(loaded, lambda call: True) as calls, pytest.raises(OutOfMemory) as failure:
        backend.run(request(n=2, seed=50))
    assert [c.batch for c in calls] == [4, 2]  # the batch, then one image: one retry, no more
    assert failure.value.user_message == (
        "Not enough GPU memory for 64×64, even one image at a time. "
        "Try a smaller size or turn on CPU offload for the local model."
    )
    assert len(backend.run(request()).images) == 1  # and the model still works


def eager_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    """inductor would need minutes on this CPU; the eager backend exercises the same routing."""
    import torch

    monkeypatch.setattr(
        dl, "_compile_unet", lambda unet, mode: torch.compile(unet, backend="eager", dynamic=False)
    )


@contextmanager
def blocked_warm_up(
    loaded: dl.LoadedModel, events: list[str], *, run_it: bool, threads: list[int] | None = None
) -> Iterator[threading.Event]:
    """Hold the compile warm-up in progress until the test sets the event it yields."""
    compiler = loaded.compiler
    assert compiler is not None
    real_warm = compiler._warm
    release = threading.Event()

    def warm(key: dl.ShapeKey) -> None:
        events.append("warm-up started")
        if threads is not None:
            threads.append(threading.get_ident())
        assert release.wait(60)
        if run_it:
            real_warm(key)
        events.append("warm-up done")

    compiler._warm = warm  # type: ignore[method-assign]
    try:
        yield release
    finally:
        release.set()
        del compiler._warm


def wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_out_of_memory_retry_waits_for_a_compile_in_progress(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The retry flips the shared UNet's attention processors: never while a warm-up traces them."""
    eager_compile(monkeypatch)
    dl.clear_cache()
    backend = dl.DiffusersBackend(str(tiny_model), local_files_only=True, compile=True)
    loaded = backend.load()
    events: list[str] = []
    outcome: dict[str, Any] = {}
    with blocked_warm_up(loaded, events, run_it=False) as release:
        backend.warm_up(64, 64)
        wait_until(lambda: events == ["warm-up started"])
        with unet_out_of_memory(loaded, lambda call: call.batch > 2, log=events) as calls:
            caller = threading.Thread(target=lambda: outcome.update(result=backend.run(request(n=2))))
            caller.start()
            wait_until(lambda: len(calls) == 1)  # the batch ran out of memory, beside the warm-up
            caller.join(0.5)
            assert caller.is_alive() and len(calls) == 1, "the retry started during the warm-up"
            release.set()
            caller.join(60)
        assert backend.wait_for_compile(timeout=60)
    assert not caller.is_alive()
    assert events == [
        "warm-up started",
        "unet ×4",  # the batch, beside the warm-up: out of memory
        "warm-up done",
        *["unet ×2 sliced"] * 4,  # the retry, alone, before the warm-up that request queued
        "warm-up started",
        "warm-up done",
    ]
    first, *retry = calls
    assert first.thread == caller.ident  # served beside the compile, not behind it
    assert len(retry) == 4 and all(c.sliced_attention for c in retry)
    assert {c.thread for c in retry} == {loaded.worker.ident}
    assert len(outcome["result"].images) == 2
    dl.clear_cache()


def test_a_retry_waiting_beside_a_compile_does_not_stall_it(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The warm-up waits for requests beside it before recording CUDA graphs, and such a request
    may itself be waiting for the warm-up (its retry): that one must not hold the other up."""
    import torch

    eager_compile(monkeypatch)
    dl.clear_cache()
    backend = dl.DiffusersBackend(str(tiny_model), local_files_only=True, compile=True)
    assert backend.compile_mode == "reduce-overhead"
    loaded = backend.load()
    events: list[str] = []
    real_call = dl.DiffusersBackend._call

    def batch_too_big(self: dl.DiffusersBackend, pipe: Any, plan: Any, seeds: list[int], *rest: Any) -> Any:
        if len(seeds) > 1:
            events.append("out of memory")
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_call(self, pipe, plan, seeds, *rest)

    monkeypatch.setattr(dl.DiffusersBackend, "_call", batch_too_big)
    results: list[ImageResult] = []
    with blocked_warm_up(loaded, events, run_it=True) as release:
        backend.warm_up(64, 64)
        wait_until(lambda: events == ["warm-up started"])
        caller = threading.Thread(target=lambda: results.append(backend.run(request(n=2, seed=8))))
        caller.start()
        wait_until(lambda: "out of memory" in events)
        release.set()
        caller.join(60)
        assert not caller.is_alive(), "the retry and the warm-up wait for each other"
        assert backend.wait_for_compile(timeout=60)
    assert events[:3] == ["warm-up started", "out of memory", "warm-up done"]
    assert [g.seed for g in results[0].images] == [8, 9]
    assert results[0].params["low_memory"] is True
    dl.clear_cache()


# -- one GPU thread per model ----------------------------------------------------------------


def test_every_pipeline_call_runs_on_the_models_gpu_thread(tiny_model: Path, source: Image.Image) -> None:
    """CUDA graphs replay only on the thread that recorded them, and the assistant calls from a new
    thread each turn: so every call, whoever makes it, runs on the one thread the model owns."""
    dl.clear_cache()
    backend = dl.DiffusersBackend(str(tiny_model), local_files_only=True)
    worker = backend.load().worker
    jobs = {
        "txt2img": request(seed=1),
        "wide": request(seed=2, width=128),
        "img2img": request(Operation.VARIATION, seed=3, steps=4, sources=(source,)),
        "inpaint": request(Operation.INPAINT, seed=4, sources=(source,), mask=left_half_mask(source.size)),
    }
    alone = {name: pixels(backend.run(job)) for name, job in jobs.items()}

    threads: dict[str, set[int]] = {name: set() for name in jobs}
    results: dict[str, ImageResult] = {}
    start = threading.Barrier(len(jobs))

    def call(name: str) -> None:
        start.wait()
        results[name] = backend.run(
            jobs[name], progress=lambda s, t: threads[name].add(threading.get_ident())
        )

    callers = [threading.Thread(target=call, args=(name,)) for name in jobs]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(120)
    assert set(results) == set(jobs)  # every concurrent caller got its images…
    for name in jobs:  # …its own, not a neighbour's, and each made on the model's thread
        assert np.array_equal(pixels(results[name]), alone[name]), name
        assert threads[name] == {worker.ident}, name
    assert worker.ident not in {caller.ident for caller in callers} | {threading.get_ident()}
    assert results["wide"].images[0].image.size == (128, 64)


def test_cancel_withdraws_a_request_still_waiting_for_the_gpu_thread(
    backend: dl.DiffusersBackend,
) -> None:
    worker = backend.load().worker
    busy, release = threading.Event(), threading.Event()

    def hold_the_gpu() -> bool:
        busy.set()
        return release.wait(30)

    blocker = threading.Thread(target=lambda: worker.run(hold_the_gpu))
    blocker.start()
    assert busy.wait(30)
    token = CancelToken()
    steps: list[int] = []
    outcome: list[str] = []

    def wait_for_the_gpu() -> None:
        try:
            worker.run(lambda: steps.append(1), exclusive=True, cancel=token)
            outcome.append("ran")
        except Cancelled:
            outcome.append("cancelled")

    waiting = threading.Thread(target=wait_for_the_gpu)
    waiting.start()
    token.cancel()
    waiting.join(5)
    assert outcome == ["cancelled"]  # Stop works while waiting, not only between steps
    release.set()
    blocker.join(30)
    assert steps == []  # withdrawn before it ran
    assert len(backend.run(request()).images) == 1


def test_a_request_during_a_compile_runs_at_once_and_compiled_ones_share_its_thread(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    eager_compile(monkeypatch)
    dl.clear_cache()
    backend = dl.DiffusersBackend(str(tiny_model), local_files_only=True, compile=True)
    loaded = backend.load()
    events: list[str] = []
    warm_threads: list[int] = []
    with blocked_warm_up(loaded, events, run_it=True, threads=warm_threads) as release:
        backend.warm_up(64, 64)
        wait_until(lambda: events == ["warm-up started"])
        here: set[int] = set()
        eager = backend.run(request(seed=9), progress=lambda s, t: here.add(threading.get_ident()))
        # it did not wait for the compile: the warm-up is still held, and the request ran here
        assert events == ["warm-up started"] and not release.is_set()
        assert eager.params["compiled"] is False
        assert here == {threading.get_ident()}
        release.set()
        assert backend.wait_for_compile(timeout=120)
    there: set[int] = set()
    compiled = backend.run(request(seed=9), progress=lambda s, t: there.add(threading.get_ident()))
    assert compiled.params["compiled"] is True and compiled.params["compile_mode"] == "reduce-overhead"
    assert "compile_mode" not in eager.params
    assert there == {loaded.worker.ident} == set(warm_threads)
    assert np.array_equal(pixels(eager), pixels(compiled))
    # compile switched off in the settings: the same loaded model serves eagerly again
    plain = dl.DiffusersBackend(str(tiny_model), local_files_only=True)
    assert plain.run(request(seed=9)).params["compiled"] is False
    dl.clear_cache()


@pytest.mark.parametrize(
    ("mode", "waits"), [("reduce-overhead", True), ("max-autotune-no-cudagraphs", False)]
)
def test_cuda_graphs_are_recorded_with_nothing_running_beside_them(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch, mode: str, waits: bool
) -> None:
    """A request served beside a compile must end before the warm-up records CUDA graphs (another
    thread's synchronisation inside a capture breaks it); modes without graphs need not wait."""
    eager_compile(monkeypatch)
    dl.clear_cache()
    backend = dl.DiffusersBackend(str(tiny_model), local_files_only=True, compile=True, compile_mode=mode)
    loaded = backend.load()
    events: list[str] = []
    beside, finish = threading.Event(), threading.Event()

    results: list[ImageResult] = []

    def progress(step: int, total: int) -> None:
        if step == 1:
            beside.set()
            assert finish.wait(60)
        if step == total:
            events.append("request's last step")

    def serve() -> None:
        results.append(backend.run(request(seed=3, steps=4), progress=progress))

    real_hold = loaded.worker.hold_inline

    def hold() -> None:
        events.append("about to record")
        real_hold()

    monkeypatch.setattr(loaded.worker, "hold_inline", hold)
    with blocked_warm_up(loaded, events, run_it=True) as release:
        backend.warm_up(64, 64)
        wait_until(lambda: events == ["warm-up started"])
        caller = threading.Thread(target=serve)
        caller.start()
        assert beside.wait(60)  # the request runs on its own thread, mid-way, beside the warm-up
        release.set()
        if waits:
            wait_until(lambda: "about to record" in events, timeout=120)  # the graph is compiled
            time.sleep(0.3)
            assert "warm-up done" not in events, "the warm-up went on recording beside a request"
        else:
            wait_until(lambda: "warm-up done" in events, timeout=120)
        finish.set()
        caller.join(60)
        assert backend.wait_for_compile(timeout=60)
    if waits:
        assert events == ["warm-up started", "about to record", "request's last step", "warm-up done"]
    else:
        assert events == ["warm-up started", "warm-up done", "request's last step"]
    assert results[0].params["compiled"] is False
    assert backend.run(request(seed=3, steps=4)).params["compiled"] is True
    dl.clear_cache()


# -- torch.compile: mode, settings kept to itself, cache folder --------------------------------


def test_compile_mode_is_the_backends_choice_and_stays_out_of_global_settings(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch
    import torch._dynamo.config
    import torch._inductor.config

    assert dl.DiffusersBackend(str(tiny_model), local_files_only=True).compile_mode == "reduce-overhead"
    with pytest.raises(InvalidRequest, match=r"Unknown compile mode 'turbo'; use one of reduce-overhead"):
        dl.DiffusersBackend(str(tiny_model), local_files_only=True, compile=True, compile_mode="turbo")

    seen: list[dict[str, Any]] = []
    real_compile = torch.compile

    def spy(model: Any, **kwargs: Any) -> Any:
        seen.append(kwargs)
        return real_compile(model, backend="eager", dynamic=False)

    monkeypatch.setattr(torch, "compile", spy)
    before = (torch._inductor.config.max_autotune, torch._inductor.config.triton.cudagraphs)
    limit = torch._dynamo.config.recompile_limit
    dl.clear_cache()
    backend = dl.DiffusersBackend(
        str(tiny_model), local_files_only=True, compile=True, compile_mode="max-autotune-no-cudagraphs"
    )
    assert backend.run(request()).params["compiled"] is False
    assert backend.wait_for_compile(timeout=120)
    assert backend.run(request()).params["compiled"] is True
    (kwargs,) = seen
    assert kwargs["options"]["max_autotune"] is True and "triton.cudagraphs" not in kwargs["options"]
    assert "mode" not in kwargs  # torch takes mode or options; the mode's options are in there
    # nothing leaked into the process-wide settings other torch code runs with
    assert (torch._inductor.config.max_autotune, torch._inductor.config.triton.cudagraphs) == before
    assert torch._dynamo.config.recompile_limit == limit
    dl.clear_cache()

    unet = dl.load_model(dl.LoadKey(str(tiny_model), "cpu", "float32", False, True), backend.source).unet
    dl._compile_unet(unet, "reduce-overhead")
    assert seen[-1]["options"]["triton.cudagraphs"] is True  # CUDA graphs: the fast path measured
    dl.clear_cache()


def test_compile_cache_goes_to_the_data_dir_but_a_users_own_folder_is_kept(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    ours = tmp_path / "data" / "cache"

    def make(compile: bool = True) -> dl.DiffusersBackend:
        return dl.DiffusersBackend(str(tiny_model), local_files_only=True, compile=compile, cache_dir=ours)

    mine = tmp_path / "my-inductor-cache"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(mine))
    assert make().compile_cache is None
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(mine)
    assert not ours.exists()

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    make(compile=False)
    assert "TORCHINDUCTOR_CACHE_DIR" not in os.environ  # nothing to compile, nothing set

    for unset in (None, default_cache_dir()):  # torch writes its /tmp default back itself
        if unset is None:
            monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
        else:
            monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", unset)
        backend = make()
        assert backend.compile_cache == ours / "torchinductor"
        assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(ours / "torchinductor")
        assert (ours / "torchinductor").is_dir()
        assert make().compile_cache == ours / "torchinductor"  # a second backend: the same folder


def test_compile_warms_in_background_and_never_blocks(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first request of a shape runs eagerly; once warm, the same shape uses the compiled UNet."""
    import torch

    # inductor would need minutes on this CPU; the eager backend exercises the same routing
    monkeypatch.setattr(
        dl, "_compile_unet", lambda unet, mode: torch.compile(unet, backend="eager", dynamic=False)
    )
    dl.clear_cache()
    backend = dl.DiffusersBackend(str(tiny_model), local_files_only=True, compile=True)
    first = backend.run(request(seed=9))
    assert first.params["compiled"] is False
    assert backend.wait_for_compile(timeout=120)
    second = backend.run(request(seed=9))
    assert second.params["compiled"] is True
    assert np.array_equal(pixels(first), pixels(second))
    # the warm-up (2 latent-only steps) left graphs whose guards real requests pass: other
    # steps, guidance, seed, operation at that shape must not recompile inside the request
    with torch._dynamo.config.patch(error_on_recompile=True):
        assert backend.run(request(seed=1, steps=3, guidance=4.5)).params["compiled"] is True
        picture = Image.new("RGB", (64, 64), (200, 100, 0))
        variation = request(Operation.VARIATION, seed=2, steps=4, sources=(picture,))
        assert backend.run(variation).params["compiled"] is True
        inpaint = request(Operation.INPAINT, seed=3, sources=(picture,), mask=left_half_mask(picture.size))
        assert backend.run(inpaint).params["compiled"] is True
    # a new shape runs eagerly at once, and is compiled behind it for next time
    assert backend.run(request(seed=9, width=128)).params["compiled"] is False
    assert backend.load().pipeline("text2img").unet is backend.load().unet  # eager UNet put back
    assert backend.wait_for_compile(timeout=120)
    assert backend.run(request(seed=9, width=128)).params["compiled"] is True
    # the warm-up runs while requests do: it shares the weights but not the tokenizer, whose
    # padding mode is state a concurrent request would otherwise flip (seen as a 2-vs-77 crash)
    loaded = backend.load()
    assert loaded.compiler is not None
    warm_pipe = loaded.compiler._warm_pipe
    assert warm_pipe.text_encoder is loaded.base.text_encoder
    assert warm_pipe.tokenizer is not loaded.base.tokenizer
    dl.clear_cache()


def test_gpu_speedups_keep_every_pipeline_working(tiny_model: Path, source: Image.Image) -> None:
    """channels_last and fused QKV normally run only on CUDA; they must not change results on any path."""
    dl.clear_cache()
    backend = dl.DiffusersBackend(str(tiny_model), local_files_only=True)
    mask = left_half_mask(source.size)
    requests = [
        request(),
        request(Operation.VARIATION, steps=4, sources=(source,)),
        request(Operation.INPAINT, sources=(source,), mask=mask),
    ]
    plain = [pixels(backend.run(r)).astype(int) for r in requests]
    dl.clear_cache()
    dl._optimize_for_gpu(backend.load().base)
    fast = [pixels(backend.run(r)).astype(int) for r in requests]
    assert all(np.abs(a - b).max() <= 2 for a, b in zip(plain, fast, strict=True))
    processors = {type(p).__name__ for p in backend.load().unet.attn_processors.values()}
    assert processors == {"FusedAttnProcessor2_0"}
    dl.clear_cache()


def test_inpainting_checkpoint_can_only_inpaint(tmp_path: Path, offline: None) -> None:
    folder = save_tiny_sd(tmp_path / "tiny-inpaint", inpainting=True)
    backend = dl.DiffusersBackend(str(folder), local_files_only=True)
    assert backend.capabilities == {Operation.INPAINT, Operation.EDIT}
    with pytest.raises(UnsupportedOperation):
        backend.run(request())
    source = Image.new("RGB", (64, 64), (90, 90, 90))
    with pytest.raises(InvalidRequest) as unmasked:  # an edit without a mask: say the mask is missing
        backend.run(request(Operation.EDIT, sources=(source,)))
    assert unmasked.value.user_message.startswith(
        f"{folder} is an inpainting model: it only repaints a masked area. Attach a mask"
    )
    assert unmasked.value.user_message.endswith("for an edit without one.")
    result = backend.run(request(Operation.INPAINT, sources=(source,), mask=left_half_mask(source.size)))
    assert result.images[0].image.size == (64, 64)
    assert result.params["pipeline"] == "StableDiffusionInpaintPipeline"


def test_importing_the_adapter_does_not_import_torch() -> None:
    code = "import sys, tools.diffusers_local; print('torch' in sys.modules, 'diffusers' in sys.modules)"
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# -- on a real GPU (pytest -m gpu; skipped where torch sees no CUDA) ------------------------------


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


on_gpu = pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def cuda_backend(tiny_model: Path) -> dl.DiffusersBackend:
    backend = dl.DiffusersBackend(str(tiny_model), local_files_only=True)  # device and dtype: automatic
    backend.run(request())  # first call per shape: cudnn picks its kernels
    return backend


@pytest.mark.gpu
@on_gpu
def test_gpu_runs_fp16_channels_last_with_fused_qkv(cuda_backend: dl.DiffusersBackend) -> None:
    import torch

    assert (cuda_backend.device, cuda_backend.dtype) == ("cuda", "float16")
    result = cuda_backend.run(request(width=128, height=64))
    assert result.images[0].image.size == (128, 64)
    assert (result.params["device"], result.params["dtype"]) == ("cuda", "float16")
    loaded = cuda_backend.load()
    for name in ("unet", "vae", "text_encoder"):
        module = getattr(loaded.base, name)
        assert (module.device.type, module.dtype) == ("cuda", torch.float16), name
    for conv in (loaded.unet.conv_in.weight, loaded.base.vae.encoder.conv_in.weight):
        assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert {type(p).__name__ for p in loaded.unet.attn_processors.values()} == {"FusedAttnProcessor2_0"}
    assert torch.backends.cudnn.benchmark
    assert not np.isnan(pixels(result).astype(float)).any() and pixels(result).std() > 0


@pytest.mark.gpu
@on_gpu
def test_gpu_seeds_replay_identically_on_the_cuda_generator(cuda_backend: dl.DiffusersBackend) -> None:
    a, b, c = (cuda_backend.run(request(seed=s)) for s in (11, 11, 12))
    assert a.params["generator"] == "torch.Generator" and a.params["generator_device"] == "cuda"
    assert np.array_equal(pixels(a), pixels(b))
    assert not np.array_equal(pixels(a), pixels(c))
    batch = cuda_backend.run(request(n=2, seed=11))
    assert np.array_equal(pixels(batch, 0), pixels(cuda_backend.run(request(n=2, seed=11)), 0))
    # a replay recorded with CPU noise asks for it, and gets the same pixels every time
    cpu = [cuda_backend.run(request(seed=11, options={"generator_device": "cpu"})) for _ in range(2)]
    assert cpu[0].params["generator_device"] == "cpu"
    assert np.array_equal(pixels(cpu[0]), pixels(cpu[1]))
    assert not np.array_equal(pixels(cpu[0]), pixels(a))


@pytest.mark.gpu
@on_gpu
def test_gpu_reduce_overhead_compile_replays_on_the_models_thread(tiny_model: Path) -> None:
    import torch

    dl.clear_cache()
    backend = dl.DiffusersBackend(str(tiny_model), local_files_only=True, compile=True)
    assert backend.compile_mode == "reduce-overhead"
    eager = backend.run(request(seed=5))
    assert eager.params["compiled"] is False
    assert backend.wait_for_compile(timeout=900)
    loaded = backend.load()
    assert loaded.compiler is not None and loaded.compiler.failed is None

    results: list[ImageResult] = []
    threads: set[int] = set()

    def progress(step: int, total: int) -> None:
        threads.add(threading.get_ident())

    def call(seed: int, steps: int = 2) -> None:
        results.append(backend.run(request(seed=seed, steps=steps), progress=progress))

    with torch._dynamo.config.patch(error_on_recompile=True):
        for args in ((5,), (5,), (6, 3)):  # each from a new thread, as the assistant calls
            caller = threading.Thread(target=call, args=args)
            caller.start()
            caller.join(300)
    assert [r.params["compiled"] for r in results] == [True, True, True]
    assert [r.images[0].image.size for r in results] == [(64, 64)] * 3
    assert threads == {loaded.worker.ident}  # the graphs recorded by the warm-up, replayed there
    assert np.array_equal(pixels(results[0]), pixels(results[1]))
    assert np.abs(pixels(results[0]).astype(int) - pixels(eager).astype(int)).mean() < 10
    dl.clear_cache()


@pytest.mark.gpu
@on_gpu
def test_gpu_fp8_quantizes_the_unets_linear_layers_and_records_it(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    if torch.cuda.get_device_capability() < (8, 9):
        with pytest.raises(InvalidRequest, match=r"compute capability 8\.9"):
            dl.DiffusersBackend(str(tiny_model), local_files_only=True, fp8=True).load()
        return
    pytest.importorskip("torchao")
    dl.clear_cache()
    reference = dl.DiffusersBackend(str(tiny_model), local_files_only=True).run(request(seed=3))
    dl.clear_cache()
    monkeypatch.setattr(dl, "FP8_MIN_FEATURES", 16)  # the tiny UNet's layers are 32 wide
    backend = dl.DiffusersBackend(str(tiny_model), local_files_only=True, fp8=True)
    result = backend.run(request(seed=3))
    unet = backend.load().unet
    kinds = {type(m.weight).__name__ for m in unet.modules() if isinstance(m, torch.nn.Linear)}
    assert any("Float8" in kind for kind in kinds), kinds
    assert result.params["fp8"] is True and "fp8" not in reference.params
    fp8, fp16 = pixels(result).astype(int), pixels(reference).astype(int)
    # the same picture as fp16 up to rounding, not another one
    assert fp8.std() > 0 and np.corrcoef(fp8.ravel(), fp16.ravel())[0, 1] > 0.9
    assert np.array_equal(pixels(backend.run(request(seed=3))), pixels(result))
    dl.clear_cache()
