"""Atelier's diffusers backend against plain diffusers, side by side in one run on one GPU.

No download: SD 1.5- and SDXL-shaped pipelines are built from their published layer sizes
with random weights, saved to a work folder, and loaded from there by both sides:

* diffusers: `AutoPipelineForText2Image.from_pretrained(folder, dtype=float16).to("cuda")`, the
  script a user would write (SDPA attention is diffusers' default on torch 2; older diffusers
  call the argument `torch_dtype`, and the bench passes whichever the installed one takes);
* Atelier: `DiffusersBackend(folder)` with everything it turns on (channels_last, fused QKV,
  cudnn autotuning, VAE tiling above 1024², and torch.compile with --compile).

Both run the same end-to-end text-to-image call (prompt encoding, 25 steps, VAE decode, PIL)
at each size and batch. The table gives seconds per image for each, the speed-up, peak GPU
memory, and a UNet roofline: UNet FLOPs per step (counted with FlopCounterMode on one
batch-2 forward, i.e. one image with classifier-free guidance) × steps ÷ the GPU's measured
fp16 matmul rate. Random weights make noise, not pictures; the arithmetic is the real one.

Two more runs follow the table on a CUDA GPU (each prints "skipped: no CUDA" elsewhere):

* SDXL at 1024² with model CPU offload, the "12 GB GPU" path: seconds per image and peak GPU
  memory (target ≤ 12 GB);
* a warm restart: a fresh Python process that loads SD 1.5 with --compile-mode and the compile
  cache under --workdir, compiles (from the cache) and makes its first compiled 512² image; run
  twice, so the second start finds the cache warm, or once when the table already compiled that
  shape into the cache (target ≤ 15 s from process start).

    python bench/diffusers_speed.py                       # sd15+sdxl, 512+1024, batch 1+4, 25 steps
    python bench/diffusers_speed.py --quick               # each model at its native size, batch 1, 10 steps
    python bench/diffusers_speed.py --compile --models sd15 --sizes 512 --batches 1
    python bench/diffusers_speed.py --smoke               # tiny shapes on CPU: proves the script runs
    python bench/diffusers_speed.py --lease --budget 420  # a short GPU lease: targets first (below)

--lease orders the work for a short lease: the target shape (SD 1.5, 512², batch 1) with
torch.compile, with a phase-by-phase breakdown of one image; the restart on the compile cache
that compile filled (one child); SDXL with offload; the target shape with an FP8 UNet
(torchao, --fp8 adds it to a normal run); then the rest of the table eagerly. A step that would
not fit in --budget seconds is listed as not run. `bash bench/gpu_check.sh` runs it on a lent
GPU machine, with the GPU tests first.

SDXL in fp16 is ~7 GB on disk in the work folder; pass --workdir to keep and reuse it.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

STARTED = time.perf_counter()  # a restart is timed from here, before the heavy imports
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools.diffusers_local import COMPILE_MODES, DEFAULT_COMPILE_MODE  # noqa: E402 (no torch import)

PROMPT = "a lighthouse on a cliff at dusk, oil painting"
MODELS = ("sd15", "sdxl")
NATIVE_SIZE = {"sd15": 512, "sdxl": 1024}


# --------------------------------------------------------------------------------------
# Model shapes: the published configs, and tiny ones for --cpu-smoke
# --------------------------------------------------------------------------------------


def unet_config(model: str, tiny: bool) -> dict[str, Any]:
    if model == "sd15" and not tiny:
        return {
            "sample_size": 64,
            "block_out_channels": (320, 640, 1280, 1280),
            "layers_per_block": 2,
            "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            "cross_attention_dim": 768,
            "attention_head_dim": 8,
        }
    if model == "sdxl" and not tiny:
        return {
            "sample_size": 128,
            "block_out_channels": (320, 640, 1280),
            "layers_per_block": 2,
            "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            "transformer_layers_per_block": (1, 2, 10),
            "attention_head_dim": (5, 10, 20),
            "cross_attention_dim": 2048,  # CLIP-L 768 + OpenCLIP bigG 1280, concatenated
            "use_linear_projection": True,
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": 256,
            "projection_class_embeddings_input_dim": 2816,  # 6 time ids × 256 + bigG's 1280
        }
    tiny_cfg: dict[str, Any] = {
        "sample_size": 32,
        "block_out_channels": (32, 64),
        "layers_per_block": 1,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
        "attention_head_dim": (2, 4),
        "cross_attention_dim": 32,
    }
    if model == "sdxl":
        tiny_cfg |= {
            "transformer_layers_per_block": (1, 2),
            "cross_attention_dim": 64,
            "use_linear_projection": True,
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": 8,
            "projection_class_embeddings_input_dim": 6 * 8 + 32,
        }
    return tiny_cfg


def vae_config(model: str, tiny: bool) -> dict[str, Any]:
    channels = (8, 8, 8, 8) if tiny else (128, 256, 512, 512)
    return {
        "block_out_channels": channels,
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "latent_channels": 4,
        "layers_per_block": 1 if tiny else 2,
        "norm_num_groups": 8 if tiny else 32,
        "sample_size": NATIVE_SIZE[model],
        "scaling_factor": 0.18215 if model == "sd15" else 0.13025,
        # the SDXL VAE overflows in fp16, so its pipeline decodes in fp32: keep that cost
        "force_upcast": model == "sdxl",
    }


def text_config(kind: str, tiny: bool) -> dict[str, Any]:
    if tiny:
        return {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4}
    if kind == "clip-l":
        return {
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "hidden_act": "quick_gelu",
            "vocab_size": 49408,
        }
    return {  # OpenCLIP ViT-bigG/14 text tower
        "hidden_size": 1280,
        "intermediate_size": 5120,
        "num_hidden_layers": 32,
        "num_attention_heads": 20,
        "hidden_act": "gelu",
        "vocab_size": 49408,
    }


def build_pipeline(model: str, *, tiny: bool, device: str, dtype: Any) -> Any:
    """A random-weight pipeline with the real layer sizes, made directly on `device`."""
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        PNDMScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from tests.tools.tiny_pipeline import byte_level_clip_tokenizer

    torch.manual_seed(0)
    tokenizer = byte_level_clip_tokenizer()
    ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "max_position_embeddings": 77,
    }

    def text(kind: str, cls: Any) -> Any:
        cfg = {"vocab_size": len(tokenizer), **text_config(kind, tiny), **ids}
        cfg["projection_dim"] = cfg["hidden_size"]
        return cls(CLIPTextConfig(**cfg))

    beta = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "steps_offset": 1}
    with torch.device(device):
        unet = UNet2DConditionModel(in_channels=4, out_channels=4, **unet_config(model, tiny))
        vae = AutoencoderKL(in_channels=3, out_channels=3, **vae_config(model, tiny))
        pipe: Any
        if model == "sd15":
            pipe = StableDiffusionPipeline(
                vae=vae,
                text_encoder=text("clip-l", CLIPTextModel),
                tokenizer=tokenizer,
                unet=unet,
                scheduler=PNDMScheduler(skip_prk_steps=True, set_alpha_to_one=False, **beta),
                safety_checker=None,
                feature_extractor=None,
                requires_safety_checker=False,
            )
        else:
            pipe = StableDiffusionXLPipeline(
                vae=vae,
                text_encoder=text("clip-l", CLIPTextModel),
                text_encoder_2=text("bigg", CLIPTextModelWithProjection),
                tokenizer=tokenizer,
                tokenizer_2=byte_level_clip_tokenizer(),
                unet=unet,
                scheduler=EulerDiscreteScheduler(timestep_spacing="leading", **beta),
                force_zeros_for_empty_prompt=True,
            )
    return pipe.to(dtype=dtype)


def saved_model(model: str, workdir: Path, *, tiny: bool, device: str, dtype: Any) -> Path:
    """The model folder, built and saved once; reused when --workdir already holds it."""
    folder = workdir / f"{model}{'-tiny' if tiny else ''}"
    done = folder / ".complete"
    if done.exists():
        return folder
    started = time.perf_counter()
    pipe = build_pipeline(model, tiny=tiny, device=device, dtype=dtype)
    pipe.save_pretrained(folder)
    done.touch()
    del pipe
    free_memory()
    print(f"  built and saved {folder.name} in {time.perf_counter() - started:.0f}s", flush=True)
    return folder


# --------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------


@dataclass
class Row:
    model: str
    size: int
    batch: int
    steps: int
    diffusers_s_per_image: float
    atelier_s_per_image: float
    diffusers_peak_gb: float | None
    atelier_peak_gb: float | None
    unet_gflop_per_step_per_image: float
    roofline_s_per_image: float
    atelier_compiled: bool

    @property
    def speedup(self) -> float:
        return self.diffusers_s_per_image / self.atelier_s_per_image


def free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


@contextmanager
def peak_memory(device: str, out: list[float | None]) -> Iterator[None]:
    import torch

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    yield
    out.append(torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None)


def timed(run: Callable[[], Any], device: str, repeats: int) -> float:
    """Median wall seconds of `repeats` calls, each ended by a device sync."""
    times = []
    for _ in range(repeats):
        sync(device)
        started = time.perf_counter()
        run()
        sync(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def matmul_flops_per_s(device: str, dtype: Any) -> float:
    """The rate a large square matmul reaches: the ceiling the UNet's GEMMs and convs aim at."""
    import torch

    n = 8192 if device.startswith("cuda") else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    iters = 20 if device.startswith("cuda") else 5
    sync(device)
    started = time.perf_counter()
    for _ in range(iters):
        a @ b
    sync(device)
    return 2 * n**3 * iters / (time.perf_counter() - started)


def unet_flops_per_step(pipe: Any, size: int) -> float:
    """FLOPs of one UNet forward at batch 2: one image's step with classifier-free guidance."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    unet = pipe.unet
    device, dtype = unet.device, unet.dtype
    latent = size // pipe.vae_scale_factor
    sample = torch.randn(2, unet.config.in_channels, latent, latent, device=device, dtype=dtype)
    context = torch.randn(2, 77, unet.config.cross_attention_dim, device=device, dtype=dtype)
    extra: dict[str, Any] = {}
    if unet.config.addition_embed_type == "text_time":
        pooled = unet.add_embedding.linear_1.in_features - 6 * unet.config.addition_time_embed_dim
        extra["added_cond_kwargs"] = {
            "text_embeds": torch.randn(2, pooled, device=device, dtype=dtype),
            "time_ids": torch.tensor([[size, size, 0, 0, size, size]] * 2, device=device, dtype=dtype),
        }
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        unet(sample, torch.tensor(500, device=device), encoder_hidden_states=context, **extra)
    return float(counter.get_total_flops())


Shape = tuple[int, int]  # (size, batch)


def shapes_for(model: str, args: argparse.Namespace) -> list[Shape]:
    if args.quick:
        return [(args.sizes[0] if args.cpu_smoke else NATIVE_SIZE[model], 1)]
    return [(size, batch) for size in args.sizes for batch in args.batches]


def time_diffusers(
    folder: Path, shapes: list[Shape], args: argparse.Namespace
) -> tuple[dict[Shape, tuple[float, float | None]], dict[int, float]]:
    """Plain diffusers as a user's script would run it: seconds per image and peak memory per shape."""
    import torch
    from diffusers import AutoPipelineForText2Image

    device = args.device
    torch.backends.cudnn.benchmark = (
        False  # Atelier turns it on process-wide; the baseline must not inherit it
    )
    from tools.diffusers_local import _dtype_kwarg

    pipe = AutoPipelineForText2Image.from_pretrained(
        folder, local_files_only=True, **{_dtype_kwarg(): args.dtype}
    ).to(device)
    pipe.set_progress_bar_config(disable=True)
    flops = {size: unet_flops_per_step(pipe, size) for size, _ in shapes}
    results: dict[Shape, tuple[float, float | None]] = {}
    for size, batch in shapes:

        def call(steps: int, size: int = size, batch: int = batch) -> Any:
            generator = torch.Generator(device=device).manual_seed(0)
            return pipe(
                PROMPT,
                height=size,
                width=size,
                num_images_per_prompt=batch,
                num_inference_steps=steps,
                generator=generator,
            )

        call(2)  # first use of a shape: kernels, allocator
        mem: list[float | None] = []
        with peak_memory(device, mem):
            seconds = timed(functools.partial(call, args.steps), device, args.repeats)
        results[size, batch] = (seconds / batch, mem[0])
        print(f"  diffusers {folder.name} {size}² ×{batch}: {seconds / batch:.3f} s/img", flush=True)
    return results, flops


def time_atelier(
    folder: Path,
    shapes: list[Shape],
    args: argparse.Namespace,
    *,
    compile: bool,
    fp8: bool = False,
    breakdown: dict[str, float] | None = None,
) -> dict[Shape, tuple[float, float | None, bool]]:
    """Atelier's backend end to end (ImageRequest in, PIL images out): s/img, peak memory, compiled?

    With `breakdown`, one more call of the first shape is timed phase by phase into it.
    """
    from tools import diffusers_local
    from tools.base import ImageRequest, Operation

    backend = diffusers_local.DiffusersBackend(
        str(folder),
        device=args.device,
        dtype=args.dtype_name,
        compile=compile,
        compile_mode=args.compile_mode,
        cache_dir=args.workdir / "compile-cache",
        local_files_only=True,
        fp8=fp8,
    )
    backend.load()
    if compile:
        started = time.perf_counter()
        for size, batch in shapes:
            backend.warm_up(size, size, batch)
        if not backend.wait_for_compile(timeout=args.compile_timeout):
            print(
                f"  compile still running after {args.compile_timeout:.0f}s; timing what is ready", flush=True
            )
        print(f"  compiled {folder.name} for {len(shapes)} shapes in {time.perf_counter() - started:.0f}s")
        compiler = backend.load().compiler
        if compiler is not None and compiler.failed:
            print(f"  torch.compile failed, Atelier runs eagerly: {compiler.failed[:500]}", flush=True)
    results: dict[Shape, tuple[float, float | None, bool]] = {}
    for size, batch in shapes:

        def request(steps: int, size: int = size, batch: int = batch) -> Any:
            return backend.run(
                ImageRequest(
                    Operation.GENERATE, PROMPT, width=size, height=size, n=batch, seed=0, steps=steps
                )
            )

        request(2)
        mem: list[float | None] = []
        with peak_memory(args.device, mem):
            seconds = timed(functools.partial(request, args.steps), args.device, args.repeats)
        compiled = bool(request(1).params["compiled"])
        results[size, batch] = (seconds / batch, mem[0], compiled)
        label = "atelier+fp8" if fp8 else "atelier  "
        print(f"  {label} {folder.name} {size}² ×{batch}: {seconds / batch:.3f} s/img", flush=True)
        if breakdown is not None and not breakdown:
            breakdown |= phase_breakdown(backend, functools.partial(request, args.steps), args.device)
    diffusers_local.clear_cache()
    return results


@contextmanager
def _phase_timers(loaded: Any, device: str) -> Iterator[dict[str, list[Any]]]:
    """Start/stop marks around the text encoders, every UNet call and the VAE decode.

    On CUDA the marks are events on the stream, so timing adds no host sync inside the call.
    With a compiler, the UNet is timed at its compiled wrapper (so only compiled shapes count):
    hooks there run outside the graph, and a hook on the module inside it would change the
    graph's guards and force a recompile in the middle of the timed call.
    """
    import torch

    cuda = device.startswith("cuda")
    marks: dict[str, list[Any]] = {"text encoders": [], "UNet": [], "VAE decode": []}

    def mark(phase: str) -> None:
        if cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            marks[phase].append(event)
        else:
            marks[phase].append(time.perf_counter())

    pipe = loaded.base
    modules = [(getattr(pipe, n, None), "text encoders") for n in ("text_encoder", "text_encoder_2")]
    compiler = loaded.compiler
    modules.append((loaded.unet if compiler is None else compiler.compiled, "UNet"))
    handles = []
    for module, phase in modules:
        if module is None:
            continue
        handles.append(module.register_forward_pre_hook(lambda *_, p=phase: mark(p)))
        handles.append(module.register_forward_hook(lambda *_, p=phase: mark(p)))
    vae = pipe.vae
    decode = vae.decode

    def timed_decode(*a: Any, **k: Any) -> Any:
        mark("VAE decode")
        out = decode(*a, **k)
        mark("VAE decode")
        return out

    vae.decode = timed_decode
    try:
        yield marks
    finally:
        del vae.decode  # the class's method again
        for handle in handles:
            handle.remove()


def phase_breakdown(backend: Any, call: Callable[[], Any], device: str) -> dict[str, float]:
    """Milliseconds of one call in each phase; "other" is the rest (scheduler, host, PIL, syncs)."""
    loaded = backend.load()
    with _phase_timers(loaded, device) as marks:
        sync(device)
        started = time.perf_counter()
        call()
        sync(device)
        total = time.perf_counter() - started
    out: dict[str, float] = {}
    for phase, stamps in marks.items():
        pairs = zip(stamps[0::2], stamps[1::2], strict=False)
        if device.startswith("cuda"):
            out[phase] = sum(a.elapsed_time(b) for a, b in pairs)
        else:
            out[phase] = sum(b - a for a, b in pairs) * 1e3
        if phase == "UNet":
            out["UNet calls"] = len(stamps) // 2
    out["other"] = total * 1e3 - sum(v for k, v in out.items() if k != "UNet calls")
    out["total"] = total * 1e3
    return out


def bench_model(
    model: str,
    folder: Path,
    args: argparse.Namespace,
    peak: float,
    shapes: list[Shape],
    *,
    compile: bool,
    breakdown: dict[str, float] | None = None,
) -> list[Row]:
    plain, flops = time_diffusers(folder, shapes, args)
    free_memory()
    ours = time_atelier(folder, shapes, args, compile=compile, breakdown=breakdown)
    free_memory()
    return [
        Row(
            model=model,
            size=size,
            batch=batch,
            steps=args.steps,
            diffusers_s_per_image=plain[size, batch][0],
            atelier_s_per_image=ours[size, batch][0],
            diffusers_peak_gb=plain[size, batch][1],
            atelier_peak_gb=ours[size, batch][1],
            unet_gflop_per_step_per_image=flops[size] / 1e9,
            roofline_s_per_image=flops[size] * args.steps / peak,
            atelier_compiled=ours[size, batch][2],
        )
        for size, batch in shapes
    ]


# --------------------------------------------------------------------------------------
# After the table: the 12 GB path, and a restart with the compile cache warm (CUDA only)
# --------------------------------------------------------------------------------------

OFFLOAD_TARGET_GB = 12.0
RESTART_TARGET_S = 15.0


def offload_run(args: argparse.Namespace) -> dict[str, Any]:
    """SDXL at 1024² through Atelier with model CPU offload: what a 12 GB card would run."""
    import torch

    from tools import diffusers_local
    from tools.base import ImageRequest, Operation

    folder = saved_model("sdxl", args.workdir, tiny=False, device=args.device, dtype=args.dtype)
    backend = diffusers_local.DiffusersBackend(
        str(folder), device="cuda", dtype=args.dtype_name, enable_offload=True, local_files_only=True
    )
    backend.load()

    def call(steps: int) -> Any:
        return backend.run(
            ImageRequest(Operation.GENERATE, PROMPT, width=1024, height=1024, seed=0, steps=steps)
        )

    call(2)
    torch.cuda.reset_peak_memory_stats()
    seconds = timed(functools.partial(call, args.steps), args.device, 1)
    allocated = torch.cuda.max_memory_allocated() / 2**30
    reserved = torch.cuda.max_memory_reserved() / 2**30
    diffusers_local.clear_cache()
    free_memory()
    return {"s_per_image": seconds, "peak_allocated_gb": allocated, "peak_reserved_gb": reserved}


def restart_child(folder: Path, args: argparse.Namespace) -> int:
    """One fresh process: load, compile from the cache, make the first compiled image; JSON out."""
    import torch

    from tools import diffusers_local
    from tools.base import ImageRequest, Operation

    quiet()
    imported = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    backend = diffusers_local.DiffusersBackend(
        str(folder),
        device=device,
        compile=True,
        compile_mode=args.compile_mode,
        cache_dir=args.workdir / "compile-cache",
        local_files_only=True,
    )
    backend.load()
    loaded = time.perf_counter()
    size = args.restart_size
    backend.warm_up(size, size, 1)
    done = backend.wait_for_compile(timeout=args.compile_timeout)
    compiled_at = time.perf_counter()
    result = backend.run(
        ImageRequest(Operation.GENERATE, PROMPT, width=size, height=size, seed=0, steps=args.steps)
    )
    sync(device)
    finished = time.perf_counter()
    compiler = backend.load().compiler
    print(
        json.dumps(
            {
                "imports_s": imported - STARTED,
                "load_s": loaded - imported,
                "compile_s": compiled_at - loaded,
                "image_s": finished - compiled_at,
                "since_start_s": finished - STARTED,
                "compiled": bool(result.params["compiled"]) and done,
                "failed": compiler.failed if compiler is not None else None,
            }
        )
    )
    return 0


def restart_run(args: argparse.Namespace, *, cache_warm: bool) -> list[dict[str, Any]]:
    """Fresh processes on the run's compile cache; the last one finds it warm.

    When this run already compiled SD 1.5 at 512² ×1 in-process, the cache is warm and one
    child is enough; otherwise a first child fills it and a second one is the measured restart.
    """
    folder = saved_model("sd15", args.workdir, tiny=args.cpu_smoke, device=args.device, dtype=args.dtype)
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--restart-child",
        str(folder),
        "--workdir",
        str(args.workdir),
        "--compile-mode",
        args.compile_mode,
        "--steps",
        str(args.steps),
        "--compile-timeout",
        str(args.compile_timeout),
        "--restart-size",
        str(args.sizes[0] if args.cpu_smoke else NATIVE_SIZE["sd15"]),
    ]
    runs: list[dict[str, Any]] = []
    labels = ("restart, cache warm",) if cache_warm else ("first start", "restart, cache warm")
    for label in labels:
        started = time.perf_counter()
        out = subprocess.run(
            command, capture_output=True, text=True, timeout=args.compile_timeout + 600, check=False
        )
        wall = time.perf_counter() - started
        lines = out.stdout.strip().splitlines()
        if out.returncode != 0 or not lines:
            print(f"  {label}: the child process failed ({out.returncode}): {out.stderr[-2000:]}", flush=True)
            break
        run = json.loads(lines[-1]) | {"label": label, "wall_s": wall}
        runs.append(run)
        print(
            f"  {label}: {wall:.1f} s to the first compiled image (imports {run['imports_s']:.1f}, "
            f"load {run['load_s']:.1f}, compile {run['compile_s']:.1f}, image {run['image_s']:.2f}; "
            f"compiled {run['compiled']})",
            flush=True,
        )
    return runs


@dataclass
class Report:
    rows: list[Row]
    breakdown: dict[str, float]
    fp8: dict[str, Any] | str
    offload: dict[str, Any] | str
    restarts: list[dict[str, Any]] | str
    not_run: list[str]
    headline: Shape | None

    def as_json(self) -> dict[str, Any]:
        return {
            "rows": [asdict(r) | {"speedup": r.speedup} for r in self.rows],
            "breakdown_ms": self.breakdown,
            "fp8": self.fp8,
            "offload": self.offload,
            "restarts": self.restarts,
            "not_run": self.not_run,
        }


class Deadline:
    """The run's time budget (--budget): a step that would not fit is reported, never cut off midway."""

    def __init__(self, seconds: float | None) -> None:
        self.end = None if seconds is None else STARTED + seconds

    def refuses(self, need: float) -> str | None:
        """Why a step of about `need` seconds is not run, or None when it fits."""
        if self.end is None:
            return None
        left = self.end - time.perf_counter()
        return (
            None
            if left >= need
            else f"not run: {max(left, 0):.0f} s of the budget left, ~{need:.0f} s needed"
        )


#: rough seconds each step takes on an H100/H200 (random weights built, compiled where it says)
STEP_NEEDS = {"restart": 60.0, "offload": 150.0, "fp8": 200.0, "sd15": 90.0, "sdxl": 240.0}


def run_plan(args: argparse.Namespace, peak: float) -> Report:
    """Every measurement in priority order, so a short lease measures what the targets need first.

    --lease: the target shape (SD 1.5, 512², batch 1) with torch.compile; a restart on the
    compile cache it filled; SDXL with offload; FP8; then the rest of the table eagerly, as far
    as --budget allows. Without --lease: the whole table (compiled with --compile), then the
    offload run and the restart.
    """
    deadline = Deadline(args.budget)
    cuda = args.device == "cuda"
    rows: list[Row] = []
    breakdown: dict[str, float] = {}
    not_run: list[str] = []
    headline: Shape | None = None
    fp8: dict[str, Any] | str = "skipped (run with --lease or --fp8)"
    if args.lease:
        headline = (args.sizes[0] if args.cpu_smoke else NATIVE_SIZE["sd15"], 1)
        folder = saved_model("sd15", args.workdir, tiny=args.cpu_smoke, device=args.device, dtype=args.dtype)
        print(f"sd15 at the target shape {headline[0]}² ×1, compiled:", flush=True)
        rows += bench_model("sd15", folder, args, peak, [headline], compile=True, breakdown=breakdown)
    else:
        for model in args.models:
            print(f"{model}:", flush=True)
            folder = saved_model(
                model, args.workdir, tiny=args.cpu_smoke, device=args.device, dtype=args.dtype
            )
            rows += bench_model(
                model, folder, args, peak, shapes_for(model, args), compile=args.compile, breakdown=breakdown
            )
    cache_warm = any(r.model == "sd15" and r.atelier_compiled and r.batch == 1 for r in rows)

    # the smoke run restarts on the CPU too: the child's code path is checked before a lease
    restarts: list[dict[str, Any]] | str = (
        "skipped: no CUDA" if not (cuda or args.cpu_smoke) else "skipped (--no-restart-run)"
    )
    if (cuda or args.cpu_smoke) and args.restart_run:
        restarts = deadline.refuses(STEP_NEEDS["restart"]) or "run"
        if restarts == "run":
            print("restart with the compile cache:", flush=True)
            restarts = restart_run(args, cache_warm=cache_warm)
    offload: dict[str, Any] | str = "skipped: no CUDA" if not cuda else "skipped (--no-offload-run)"
    if cuda and args.offload_run:
        offload = deadline.refuses(STEP_NEEDS["offload"]) or "run"
        if offload == "run":
            print("sdxl with CPU offload:", flush=True)
            offload = offload_run(args)
    if args.lease or args.fp8:
        fp8 = deadline.refuses(STEP_NEEDS["fp8"]) or fp8_run(args)
    if args.lease:
        assert headline is not None
        for model in args.models:
            shapes = [shape for shape in shapes_for(model, args) if (model, shape) != ("sd15", headline)]
            refused = deadline.refuses(STEP_NEEDS[model])
            if not shapes:
                continue
            if refused:
                not_run.append(f"{model} {', '.join(f'{s}²×{b}' for s, b in shapes)}: {refused}")
                continue
            print(f"{model} (eager):", flush=True)
            folder = saved_model(
                model, args.workdir, tiny=args.cpu_smoke, device=args.device, dtype=args.dtype
            )
            rows += bench_model(model, folder, args, peak, shapes, compile=False)
    return Report(rows, breakdown, fp8, offload, restarts, not_run, headline)


def fp8_run(args: argparse.Namespace) -> dict[str, Any] | str:
    """The target shape once more with the UNet's linear layers in FP8 (torchao), compiled."""
    import torch

    if not args.device.startswith("cuda"):
        return "skipped: no CUDA"
    capability = torch.cuda.get_device_capability()
    if capability < (8, 9):
        return f"skipped: compute capability {capability[0]}.{capability[1]} has no FP8 tensor cores"
    try:
        import torchao
    except ImportError:
        return "skipped: torchao is not installed"
    size = NATIVE_SIZE["sd15"]
    folder = saved_model("sd15", args.workdir, tiny=False, device=args.device, dtype=args.dtype)
    print(f"sd15 {size}² ×1 with FP8 (torchao {torchao.__version__}), compiled:", flush=True)
    try:
        result = time_atelier(folder, [(size, 1)], args, compile=True, fp8=True)
    except Exception as exc:  # a lever that fails is a finding, not the end of the run
        return f"failed: {type(exc).__name__}: {str(exc)[:400]}"
    finally:
        free_memory()
    seconds, peak_gb, compiled = result[size, 1]
    return {"s_per_image": seconds, "peak_gb": peak_gb, "compiled": compiled, "torchao": torchao.__version__}


def print_extras(offload: dict[str, Any] | str, restarts: list[dict[str, Any]] | str) -> None:
    """The two extra runs; each is its numbers, or why it did not run ("skipped: no CUDA")."""
    if isinstance(offload, str):
        print(f"SDXL 1024² with CPU offload (12 GB path): {offload}")
    else:
        verdict = "within" if offload["peak_reserved_gb"] <= OFFLOAD_TARGET_GB else "OVER"
        print(
            f"SDXL 1024² with CPU offload (12 GB path): {offload['s_per_image']:.2f} s/img, "
            f"peak GPU memory {offload['peak_allocated_gb']:.1f} GB allocated / "
            f"{offload['peak_reserved_gb']:.1f} GB reserved "
            f"({verdict} the {OFFLOAD_TARGET_GB:.0f} GB target; the CUDA context adds ~0.5 GB)"
        )
    if isinstance(restarts, str):
        print(f"warm restart (first compiled image after a process start): {restarts}")
    elif not restarts:
        print("warm restart (first compiled image after a process start): the child process failed")
    else:
        last = restarts[-1]
        verdict = "within" if last["wall_s"] <= RESTART_TARGET_S and last["compiled"] else "OVER"
        print(
            f"warm restart (first compiled image after a process start): {last['wall_s']:.1f} s "
            f"({verdict} the {RESTART_TARGET_S:.0f} s target; {len(restarts)} run(s), last: {last['label']})"
        )


def print_report(report: Report) -> None:
    """The table, then each extra run, then the targets: the reply of a lease shows this tail."""
    print_table(report.rows)
    if report.breakdown:
        b = report.breakdown
        print(
            f"one image, phase by phase (ms): text encoders {b['text encoders']:.1f} · "
            f"UNet {b['UNet']:.1f} ({b['UNet calls']:.0f} calls) · VAE decode {b['VAE decode']:.1f} · "
            f"other (scheduler, host, PIL) {b['other']:.1f} · total {b['total']:.1f}"
        )
    print()
    if isinstance(report.fp8, str):
        print(f"FP8 UNet (torchao): {report.fp8}")
    else:
        base = next(
            (r for r in report.rows if report.headline == (r.size, r.batch) and r.model == "sd15"), None
        )
        versus = f", {base.diffusers_s_per_image / report.fp8['s_per_image']:.2f}× plain" if base else ""
        print(
            f"FP8 UNet (torchao {report.fp8['torchao']}): {report.fp8['s_per_image']:.3f} s/img{versus} "
            f"(compiled {report.fp8['compiled']})"
        )
    print_extras(report.offload, report.restarts)
    for line in report.not_run:
        print(f"{line}")
    print_targets(report)


def print_targets(report: Report) -> None:
    """Issue 7's targets at SD 1.5, 512², batch 1: within or OVER, from this run's numbers."""
    row = next((r for r in report.rows if r.model == "sd15" and (r.size, r.batch) == (512, 1)), None)
    if row is None:
        return
    fastest = row.atelier_s_per_image
    label = "Atelier"
    if isinstance(report.fp8, dict) and report.fp8["s_per_image"] < fastest:
        fastest, label = report.fp8["s_per_image"], "Atelier + FP8"
    roof = fastest / row.roofline_s_per_image
    speedup = row.diffusers_s_per_image / fastest
    print(
        f"targets at sd15 512² ×1 ({label}, compiled {row.atelier_compiled}): "
        f"{fastest:.3f} s/img = {roof:.2f}× the roofline ({'within' if roof <= 3 else 'OVER'} 3×), "
        f"{speedup:.2f}× plain diffusers ({'within' if speedup >= 6 else 'UNDER'} 6×)"
    )


def print_table(rows: list[Row]) -> None:
    def gb(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.1f}"

    header = (
        f"{'model':<6} {'size':>5} {'batch':>5} {'diffusers s/img':>15} {'atelier s/img':>13} "
        f"{'speed-up':>8} {'peak GB d/a':>12} {'UNet GFLOP/step':>15} {'roofline s/img':>14} "
        f"{'atelier/roof':>12}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        tag = "*" if r.atelier_compiled else " "
        print(
            f"{r.model:<6} {r.size:>5} {r.batch:>5} {r.diffusers_s_per_image:>15.3f} "
            f"{r.atelier_s_per_image:>12.3f}{tag} {r.speedup:>7.2f}× "
            f"{gb(r.diffusers_peak_gb) + '/' + gb(r.atelier_peak_gb):>12} "
            f"{r.unet_gflop_per_step_per_image:>15.1f} {r.roofline_s_per_image:>14.3f} "
            f"{r.roofline_s_per_image / r.atelier_s_per_image:>11.0%}"
        )
    if any(r.atelier_compiled for r in rows):
        print("* = Atelier ran the torch.compiled UNet")
    print(
        "roofline = UNet FLOPs per step for one image with CFG (a batch-2 forward) × steps ÷ the measured\n"
        "matmul rate; atelier/roof = the share of that bound Atelier reaches end to end (text encoder,\n"
        "VAE decode and PIL conversion included)."
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    def ints(text: str) -> list[int]:
        return [int(part) for part in text.split(",") if part]

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--models", default="sd15,sdxl", help="comma-separated: sd15, sdxl")
    parser.add_argument("--sizes", type=ints, default=[512, 1024], help="square sizes in pixels")
    parser.add_argument("--batches", type=ints, default=[1, 4], help="images per call")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per shape (median)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument(
        "--compile-mode",
        default=DEFAULT_COMPILE_MODE,
        choices=COMPILE_MODES,
        help=f"torch.compile mode for Atelier's UNet (default {DEFAULT_COMPILE_MODE}: CUDA graphs)",
    )
    parser.add_argument("--compile-timeout", type=float, default=1800.0)
    parser.add_argument(
        "--quick", action="store_true", help="native size per model, batch 1, 10 steps, 1 repeat"
    )
    parser.add_argument(
        "--smoke",
        "--cpu-smoke",
        dest="cpu_smoke",
        action="store_true",
        help="tiny shapes on CPU, 2 steps: checks the script",
    )
    parser.add_argument(
        "--offload-run",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="SDXL 1024² with CPU offload after the table (CUDA only)",
    )
    parser.add_argument(
        "--restart-run",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="time a restart with a warm compile cache after the table (CUDA only)",
    )
    parser.add_argument("--restart-child", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--restart-size", type=int, default=512, help=argparse.SUPPRESS)
    parser.add_argument(
        "--dtype", dest="dtype_name", default=None, help="float16 (default on GPU) or bfloat16"
    )
    parser.add_argument(
        "--workdir", type=Path, default=None, help="keep built models here (default: a temp dir)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    parser.add_argument(
        "--lease",
        action="store_true",
        help="for a short GPU lease: the target shape compiled first, then restart, offload, FP8, "
        "and the rest of the table eagerly, as far as --budget allows",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds for the whole run; steps that would not fit are skipped",
    )
    parser.add_argument("--fp8", action="store_true", help="also time the target shape with an FP8 UNet")
    args = parser.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = set(args.models) - set(MODELS)
    if unknown:
        parser.error(f"unknown model(s) {', '.join(sorted(unknown))}; choose from {', '.join(MODELS)}")
    if args.quick:
        args.steps, args.repeats = min(args.steps, 10), 1
    if args.cpu_smoke:
        args.sizes, args.batches, args.steps, args.repeats = [64], [1, 2], 2, 1
    return args


def quiet() -> None:
    """No progress bars or load chatter between the bench's own lines."""
    warnings.filterwarnings("ignore", category=RuntimeWarning)  # random weights decode to NaN-ish noise
    from diffusers.utils import logging as diffusers_logging
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    diffusers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    disable_progress_bars()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.restart_child is not None:
        args.workdir = args.workdir or args.restart_child.parent
        return restart_child(args.restart_child, args)
    import torch

    if torch.cuda.is_available() and not args.cpu_smoke:
        args.device = "cuda"
        args.dtype_name = args.dtype_name or "float16"
    elif args.cpu_smoke:
        args.device, args.dtype_name = "cpu", "float32"
    else:
        print(
            "This benchmark times fp16 GPU kernels and needs a CUDA GPU; torch sees none here.\n"
            "Run it on a GPU machine, or pass --smoke to check that it runs (tiny shapes, 2 steps).",
            file=sys.stderr,
        )
        return 2
    args.dtype = getattr(torch, args.dtype_name)
    quiet()

    temp = None
    if args.workdir is None:
        temp = tempfile.mkdtemp(prefix="atelier-bench-")
        args.workdir = Path(temp)
    args.workdir.mkdir(parents=True, exist_ok=True)
    try:
        import diffusers

        name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU (smoke test: tiny shapes)"
        peak = matmul_flops_per_s(args.device, args.dtype)
        print(f"{name} · torch {torch.__version__} · diffusers {diffusers.__version__} · {args.dtype_name}")
        rate = f"{peak / 1e12:.0f} TFLOP/s" if peak > 1e12 else f"{peak / 1e9:.0f} GFLOP/s"
        print(f"matmul {rate} · {args.steps} steps · compile {args.compile}", flush=True)
        if args.cpu_smoke:
            print("CPU smoke run: the numbers only show that every path runs; time on a GPU.", flush=True)
        report = run_plan(args, peak)
        print()
        print_report(report)
        if args.json is not None:
            args.json.write_text(json.dumps(report.as_json(), indent=2))
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
