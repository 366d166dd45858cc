"""The diffusers adapter against a tiny random-weight SD 1.5-shaped pipeline saved to tmp_path.

Everything goes through the real loading path (`from_pretrained(local_files_only=True)` on a
folder) with the hub switched off. Images are 64×64 (8×8 latents) with 2–4 steps, so a call
takes a few tens of milliseconds; most of the module's time is importing torch and diffusers.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
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


def test_hub_id_when_offline() -> None:
    with pytest.raises(ModelNotFound, match="not in the Hugging Face cache") as info:
        dl.DiffusersBackend("nobody/no-such-model", local_files_only=True)
    assert "offline" in info.value.user_message


def test_mask_of_the_wrong_size(backend: dl.DiffusersBackend, source: Image.Image) -> None:
    with pytest.raises(InvalidImage, match=r"mask is 32×32 but the image is 64×64"):
        backend.run(request(Operation.INPAINT, sources=(source,), mask=Image.new("L", (32, 32), 255)))


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


def test_out_of_memory_retries_one_image_at_a_time(
    backend: dl.DiffusersBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch
    from diffusers import StableDiffusionPipeline

    expected = [pixels(backend.run(request(seed=s))) for s in (50, 51)]
    real_call = StableDiffusionPipeline.__call__
    calls: list[int] = []

    def batch_too_big(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs["num_images_per_prompt"])
        if kwargs["num_images_per_prompt"] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_call(self, *args, **kwargs)

    monkeypatch.setattr(StableDiffusionPipeline, "__call__", batch_too_big)
    events: list[tuple[int, int]] = []
    result = backend.run(request(n=2, seed=50), progress=lambda s, t: events.append((s, t)))
    assert calls == [2, 1, 1]
    assert [g.seed for g in result.images] == [50, 51]
    # sliced attention sums in another order: the same images, give or take one level
    for i in range(2):
        assert np.abs(pixels(result, i).astype(int) - expected[i].astype(int)).max() <= 2
    assert any("one at a time" in note for note in result.notes)
    assert result.params["low_memory"] is True
    assert events == [(1, 4), (2, 4), (3, 4), (4, 4)]
    # the fast attention settings are back once the retry is over
    unet = backend.load().unet
    assert not any("Sliced" in type(p).__name__ for p in unet.attn_processors.values())

    def always_oom(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("CUDA error: out of memory")

    monkeypatch.setattr(StableDiffusionPipeline, "__call__", always_oom)
    with pytest.raises(OutOfMemory, match="CPU offload"):
        backend.run(request())


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
    result = backend.run(request(Operation.INPAINT, sources=(source,), mask=left_half_mask(source.size)))
    assert result.images[0].image.size == (64, 64)
    assert result.params["pipeline"] == "StableDiffusionInpaintPipeline"


def test_importing_the_adapter_does_not_import_torch() -> None:
    code = "import sys, tools.diffusers_local; print('torch' in sys.modules, 'diffusers' in sys.modules)"
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
