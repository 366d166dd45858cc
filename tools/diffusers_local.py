"""Any local diffusers model (SD 1.5, SDXL, …) behind the `ImageBackend` protocol.

The file reads top to bottom like a diffusers pipeline, in the order a request meets it:

1. names users type (samplers, dtypes) and the checks that need no torch;
2. where the model comes from (a folder or a hub id) and why it cannot be loaded;
3. loading, once per process: one set of components shared by the text-to-image,
   image-to-image and inpainting pipelines (`from_pipe`), plus the GPU speed-ups;
4. the model's GPU thread, which makes every pipeline call, and the optional `torch.compile`
   of the UNet that warms up on it while requests are served eagerly;
5. `DiffusersBackend.run`: check → seeds and scheduler → denoise with a step callback →
   out-of-memory retry → `ImageResult`.

Importing this module is cheap: torch and diffusers are imported when a backend is built.
"""

from __future__ import annotations

import copy
import gc
import inspect
import json
import logging
import os
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from PIL import Image as PILImage

from tools.base import (
    Cancelled,
    CancelToken,
    ContentPolicyViolation,
    GeneratedImage,
    ImageRequest,
    ImageResult,
    InvalidRequest,
    ModelNotFound,
    Operation,
    OutOfMemory,
    ProgressCallback,
    check_capability,
    derive_seeds,
)
from tools.image_input import check_sources, prepare_mask

log = logging.getLogger(__name__)

NAME = "diffusers"
CAPABILITIES: frozenset[Operation] = frozenset(
    {Operation.GENERATE, Operation.IMG2IMG, Operation.INPAINT, Operation.VARIATION, Operation.EDIT}
)

DEFAULT_STEPS = 30
DEFAULT_GUIDANCE = 7.0
#: how far an image-to-image run may move from its source; a variation stays close to it
DEFAULT_STRENGTH: Mapping[Operation, float] = {
    Operation.IMG2IMG: 0.75,
    Operation.EDIT: 0.7,
    Operation.VARIATION: 0.5,
    Operation.INPAINT: 1.0,
}
MAX_IMAGES = 8
MAX_STEPS = 150
MAX_GUIDANCE = 50.0
MAX_SIDE = 4096
#: above this many pixels the VAE decodes in tiles; below it tiling only costs time
TILE_VAE_ABOVE = 1024 * 1024
#: distinct (batch, size, sampler) shapes compiled per model; later shapes stay eager
MAX_COMPILED_SHAPES = 8
#: torch.compile modes; the CUDA-graph ones (reduce-overhead, max-autotune) replay a whole UNet
#: step as one graph launch, which is what makes small batches fast (measured in issue 7)
COMPILE_MODES = ("reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs", "default")
DEFAULT_COMPILE_MODE = "reduce-overhead"

Kind = Literal["text2img", "img2img", "inpaint"]
T = TypeVar("T")


# --------------------------------------------------------------------------------------
# 1. Names users type, checked before anything heavy
# --------------------------------------------------------------------------------------

#: sampler name → (diffusers scheduler class, extra config). Built `from_config` of the
#: model's own scheduler, so betas and timestep spacing stay the model's.
SCHEDULERS: Mapping[str, tuple[str, Mapping[str, Any]]] = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpm++": ("DPMSolverMultistepScheduler", {}),
    "dpm++_karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "dpm++_sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "dpm++_sde_karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True},
    ),
    "ddim": ("DDIMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
}
#: AUTOMATIC1111 / k-diffusion spellings, so a sampler read back from PNG metadata replays
SCHEDULER_ALIASES: Mapping[str, str] = {
    "k_euler": "euler",
    "euler_ancestral": "euler_a",
    "k_euler_a": "euler_a",
    "k_euler_ancestral": "euler_a",
    "k_heun": "heun",
    "dpmpp_2m": "dpm++",
    "dpm++_2m": "dpm++",
    "dpmsolver++": "dpm++",
    "dpmpp_2m_karras": "dpm++_karras",
    "dpm++_2m_karras": "dpm++_karras",
    "dpmpp_sde": "dpm++_sde",
    "dpm++_2m_sde": "dpm++_sde",
    "dpmpp_sde_karras": "dpm++_sde_karras",
    "dpm++_2m_sde_karras": "dpm++_sde_karras",
    "dpmpp_2m_sde_karras": "dpm++_sde_karras",
    "dpm++2m": "dpm++",
    "dpm++2m_karras": "dpm++_karras",
    "plms": "pndm",
    "k_lms": "lms",
    "uni_pc": "unipc",
}

_DTYPE_NAMES: Mapping[str, str] = {
    "fp16": "float16",
    "float16": "float16",
    "half": "float16",
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
    "fp32": "float32",
    "float32": "float32",
    "float": "float32",
}


def scheduler_name(name: str | None) -> str:
    """The canonical sampler name for what a user or a PNG's metadata wrote, or InvalidRequest."""
    if name is None or not name.strip():
        return "default"
    key = re.sub(r"[\s\-]+", "_", name.strip().lower())
    key = SCHEDULER_ALIASES.get(key, key)
    if key == "default" or key in SCHEDULERS:
        return key
    choices = ", ".join(["default", *SCHEDULERS])
    raise InvalidRequest(f"Unknown sampler {name!r}. Choose one of: {choices}.")


def sampler_label(scheduler: Any) -> str:
    """The sampler name for a scheduler object, so 'the model's default' is stored as what it was."""
    config = getattr(scheduler, "config", {})
    # the most specific first: DPM++ SDE Karras also has DPM++ Karras's use_karras_sigmas
    for name, (class_name, extra) in sorted(SCHEDULERS.items(), key=lambda item: -len(item[1][1])):
        if type(scheduler).__name__ != class_name:
            continue
        if extra and all(config.get(k) == v for k, v in extra.items()):
            return name
        if (
            not extra
            and not config.get("use_karras_sigmas")
            and "sde" not in str(config.get("algorithm_type"))
        ):
            return name
    return "default"


def _dtype_name(dtype: str | None, device: str) -> str:
    """fp16 on GPUs (halves memory, uses tensor cores); fp32 on CPU, where fp16 is slow or missing."""
    if dtype is None:
        return "float16" if device.startswith(("cuda", "mps")) else "float32"
    resolved = _DTYPE_NAMES.get(dtype.strip().lower().removeprefix("torch."))
    if resolved is None:
        raise InvalidRequest(f"Unknown dtype {dtype!r}; use float16, bfloat16 or float32.")
    if resolved == "float16" and device == "cpu":
        raise InvalidRequest("float16 needs a GPU; on CPU use float32 (or bfloat16 on recent CPUs).")
    return resolved


def _pick_device(device: str | None) -> str:
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    device = device.strip().lower()
    if not re.fullmatch(r"cpu|mps|cuda(:\d+)?", device):
        raise InvalidRequest(f"Unknown device {device!r}; use cuda, cuda:N, mps or cpu.")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InvalidRequest(f"Device {device!r} was asked for, but torch sees no CUDA GPU.")
    if device == "mps" and not torch.backends.mps.is_available():
        raise InvalidRequest("Device 'mps' was asked for, but this torch has no Apple GPU support.")
    return device


# --------------------------------------------------------------------------------------
# 2. Where the model comes from
# --------------------------------------------------------------------------------------

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?")


@dataclass(frozen=True)
class ModelSource:
    """A checked model location: a complete local folder, or a hub id to download or read from cache."""

    location: str
    kind: Literal["folder", "hub"]
    #: an inpainting checkpoint (9-channel UNet) can only inpaint
    inpaint_only: bool = False


def check_model_source(model: str, *, local_files_only: bool = False) -> ModelSource:
    """Fail with a specific message before torch is even imported: most load errors are a wrong path."""
    if not model or not model.strip():
        raise ModelNotFound("No local model is configured; set a diffusers folder or a hub id.")
    model = model.strip()
    path = Path(model).expanduser()
    looks_like_path = (
        path.exists()
        or path.is_absolute()
        or model.startswith((".", "~"))
        or "\\" in model
        or model.count("/") > 1
        or not _HUB_ID.fullmatch(model)
    )
    if looks_like_path:
        return _check_folder(path)
    return _check_hub_id(model, local_files_only=local_files_only)


def _check_folder(path: Path) -> ModelSource:
    if not path.exists():
        raise ModelNotFound(f"Model folder {path} does not exist.")
    if path.is_file():
        raise ModelNotFound(
            f"{path} is a single file; Atelier loads diffusers folders (with model_index.json). "
            "Convert it with diffusers' conversion scripts or pick the model's diffusers folder."
        )
    index_file = path / "model_index.json"
    if not index_file.is_file():
        raise ModelNotFound(f"{path} is not a complete diffusers model: missing model_index.json")
    try:
        index = json.loads(index_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelNotFound(f"{path} is not a complete diffusers model: unreadable model_index.json") from exc
    if not isinstance(index, dict):  # valid JSON, but `[1, 2]` or `null` lists no components
        raise ModelNotFound(
            f"{path} is not a complete diffusers model: model_index.json is not an object of components"
        )
    denoiser = next((name for name in ("unet", "transformer") if _listed(index, name)), None)
    if denoiser is None:
        raise ModelNotFound(f"{path} is not a complete diffusers model: missing unet")
    for name in index:
        if _listed(index, name) and not (path / name).is_dir():
            raise ModelNotFound(f"{path} is not a complete diffusers model: missing {name}")
    weights = [p for p in (path / denoiser).iterdir() if p.suffix in (".safetensors", ".bin", ".ckpt")]
    if not weights:
        raise ModelNotFound(f"{path} is not a complete diffusers model: missing {denoiser} weights")
    return ModelSource(str(path), "folder", inpaint_only=_is_inpainting_unet(path / denoiser))


def _listed(index: Mapping[str, Any], name: str) -> bool:
    """model_index.json lists a component as [library, class]; [null, null] means 'not used'."""
    value = index.get(name)
    return isinstance(value, list) and len(value) == 2 and value[0] is not None


def _is_inpainting_unet(folder: Path) -> bool:
    """A 9-channel UNet (latents, mask, masked image); a config that says nothing sane is not one,
    and loading it then names what is wrong."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("in_channels") == 9


def _check_hub_id(model: str, *, local_files_only: bool) -> ModelSource:
    from huggingface_hub import constants, try_to_load_from_cache

    offline = local_files_only or bool(constants.HF_HUB_OFFLINE)
    if offline and not isinstance(try_to_load_from_cache(model, "model_index.json"), str):
        raise ModelNotFound(
            f"{model} is not a local folder and is not in the Hugging Face cache, and downloads are off "
            "(offline mode). Download it once with a network connection "
            f"(`hf download {model}`), or point Atelier to a local diffusers folder."
        )
    return ModelSource(model, "hub")


# --------------------------------------------------------------------------------------
# 3. Loading, once per process
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadKey:
    """What makes two loads different; the sampler is not in it (it is swapped per request)."""

    model: str
    device: str
    dtype: str
    enable_offload: bool
    local_files_only: bool
    #: the UNet's linear layers in FP8 (torchao): other weights, so another load
    fp8: bool = False


@dataclass(frozen=True)
class CacheInfo:
    #: how many times weights were read from disk or the hub in this process
    loads: int
    models: tuple[LoadKey, ...]


class LoadedModel:
    """One set of weights, the pipelines that share it, and the thread that runs them.

    diffusers pipelines keep per-call state on the object (`_interrupt`, the scheduler's
    timesteps), so two requests must not call them at once; `lock` serialises requests.
    `worker` is the one thread that makes the pipeline calls (see `GpuWorker`).
    """

    def __init__(
        self, key: LoadKey, source: ModelSource, base: Any, base_kind: Kind, worker: GpuWorker
    ) -> None:
        self.key = key
        self.source = source
        self.lock = threading.RLock()
        self.worker = worker
        self.unet: Any = getattr(base, "unet", None)
        self.base_scheduler: Any = base.scheduler
        self.size_multiple = size_multiple(base)
        self.compiler: UnetCompiler | None = None
        self._pipelines: dict[Kind, Any] = {base_kind: base}
        self._base_kind: Kind = base_kind
        self._create_lock = threading.Lock()

    @property
    def base(self) -> Any:
        return self._pipelines[self._base_kind]

    def pipeline(self, kind: Kind) -> Any:
        """The pipeline for a task, made on first use from the same components (no new weights)."""
        with self._create_lock:
            if kind not in self._pipelines:
                self._pipelines[kind] = self._from_pipe(kind)
            return self._pipelines[kind]

    def _from_pipe(self, kind: Kind) -> Any:
        from diffusers import (
            AutoPipelineForImage2Image,
            AutoPipelineForInpainting,
            AutoPipelineForText2Image,
        )

        auto = {
            "text2img": AutoPipelineForText2Image,
            "img2img": AutoPipelineForImage2Image,
            "inpaint": AutoPipelineForInpainting,
        }[kind]
        try:
            pipe = auto.from_pipe(self.base)
        except ValueError as exc:
            raise InvalidRequest(f"{self.key.model} has no {kind} pipeline in diffusers.") from exc
        pipe.set_progress_bar_config(disable=True)
        if self.key.enable_offload:
            pipe.enable_model_cpu_offload(device=self.key.device)
        return pipe

    def make_scheduler(self, name: str) -> Any:
        """A fresh scheduler per call: they keep state between steps, and each call may pick another."""
        base = self.base_scheduler
        if name == "default":
            return type(base).from_config(base.config)
        class_name, extra = SCHEDULERS[name]
        compatible = {cls.__name__ for cls in getattr(base, "compatibles", [])}
        if class_name not in compatible:
            raise InvalidRequest(
                f"The {name} sampler does not work with this model's {type(base).__name__}; "
                "leave the sampler on default."
            )
        import diffusers

        try:
            return getattr(diffusers, class_name).from_config(base.config, **extra)
        except ImportError as exc:
            raise InvalidRequest(f"The {name} sampler needs an extra package: {exc}") from exc

    def enable_compile(self, mode: str) -> None:
        with self._create_lock:
            if self.compiler is None and self.unet is not None:
                self.compiler = UnetCompiler(self, mode)

    def close(self) -> None:
        """Stop the compile queue and the GPU thread (what is running finishes on its own)."""
        if self.compiler is not None:
            self.compiler.stop()
        self.worker.stop()


_CACHE: dict[LoadKey, LoadedModel] = {}
_CACHE_LOCK = threading.Lock()
_LOADS = 0


def load_model(key: LoadKey, source: ModelSource) -> LoadedModel:
    """The process-wide pipelines for `key`, loaded on first use; later callers wait for that load.

    The load runs on the model's GPU thread too: the weights reach the device, and the CPU's
    thread pools are set up, on the thread that will compute with them.
    """
    global _LOADS
    with _CACHE_LOCK:
        loaded = _CACHE.get(key)
        if loaded is None:
            worker = GpuWorker(f"atelier-gpu-{Path(key.model).name or key.model}")
            try:
                loaded = worker.run(lambda: _load(key, source, worker))
            except BaseException:
                worker.stop(timeout=0)
                raise
            _CACHE[key] = loaded
            _LOADS += 1
        return loaded


def cache_info() -> CacheInfo:
    with _CACHE_LOCK:
        return CacheInfo(loads=_LOADS, models=tuple(_CACHE))


def clear_cache() -> None:
    """Drop every loaded model and give the memory back (tests, switching models in the UI)."""
    global _LOADS
    with _CACHE_LOCK:
        for loaded in _CACHE.values():
            loaded.close()
        _CACHE.clear()
        _LOADS = 0
    _free_memory()


def _quiet_libraries() -> None:
    """transformers and diffusers talk on stderr: loading bars, "requires torchvision" notices,
    token-truncation warnings Atelier already turns into its own note, and fp32-module hints.
    A chat turn prints its own lines; theirs are noise there, and in the UI's server log."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    import diffusers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()


def _load(key: LoadKey, source: ModelSource, worker: GpuWorker) -> LoadedModel:
    import torch

    _quiet_libraries()
    from diffusers import AutoPipelineForInpainting, AutoPipelineForText2Image

    if source.kind == "folder":
        # Checked when the backend was made, but the folder may have gone since (moved, deleted,
        # an unmounted disk); diffusers would then blame the hub, so say what is really wrong.
        _check_folder(Path(source.location))
    base_kind: Kind = "inpaint" if source.inpaint_only else "text2img"
    auto = AutoPipelineForInpainting if source.inpaint_only else AutoPipelineForText2Image
    started = time.perf_counter()
    try:
        pipe = auto.from_pretrained(
            source.location,
            local_files_only=key.local_files_only,
            **{_dtype_kwarg(): getattr(torch, key.dtype)},
        )
    except (OSError, ValueError, TypeError, KeyError) as exc:  # a config with wrong types says TypeError
        raise _load_error(key.model, source, exc) from exc
    except ImportError as exc:
        raise ModelNotFound(f"{key.model} needs a package that is not installed: {exc}") from exc
    pipe.set_progress_bar_config(disable=True)
    try:
        if key.enable_offload:
            # Weights wait in CPU RAM and move to the GPU one model at a time: SDXL at 1024²
            # fits in ~12 GB. A sliced (and, per call, tiled) VAE keeps the decode under that.
            pipe.enable_model_cpu_offload(device=key.device)
            if hasattr(pipe.vae, "enable_slicing"):
                pipe.vae.enable_slicing()
        else:
            pipe.to(key.device)
    except Exception as exc:
        if _is_oom(exc):
            _free_memory()
            raise OutOfMemory(
                f"{key.model} does not fit in GPU memory. Turn on CPU offload for the local model, "
                "or use a smaller model."
            ) from exc
        raise
    if key.device.startswith("cuda"):
        _optimize_for_gpu(pipe)
    if key.fp8:
        _quantize_unet_fp8(pipe, key.device)
    log.info("loaded %s on %s/%s in %.1fs", key.model, key.device, key.dtype, time.perf_counter() - started)
    return LoadedModel(key, source, pipe, base_kind, worker)


def _dtype_kwarg() -> str:
    """diffusers renamed `torch_dtype` to `dtype` (the old name now warns); older releases know only that."""
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401
    except ImportError:
        return "torch_dtype"
    return "dtype"


def _load_error(model: str, source: ModelSource, exc: Exception) -> ModelNotFound:
    reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, TypeError | KeyError):  # diffusers' words for a config value of the wrong type
        reason = f"a config.json in it has a missing or wrong-typed value ({reason})"
    if source.kind == "folder":
        return ModelNotFound(f"{model} could not be loaded as a diffusers model: {reason}")
    return ModelNotFound(
        f"{model} is not a local folder, and loading it from the Hugging Face Hub failed ({reason}). "
        "Check the path or the id and the network, or download it once and point Atelier to the folder."
    )


def _optimize_for_gpu(pipe: Any) -> None:
    """Speed-ups that change no result a user would notice; each is skipped where a model lacks it.

    SDPA attention is already diffusers' default on torch 2. channels_last lets cuDNN pick its
    fastest NHWC convolution kernels; fused QKV turns three attention projections into one GEMM;
    cudnn.benchmark picks conv algorithms per shape once and then reuses them.
    """
    import torch

    torch.backends.cudnn.benchmark = True
    for name in ("unet", "vae"):
        module = getattr(pipe, name, None)
        if module is not None:
            module.to(memory_format=torch.channels_last)
    if hasattr(pipe, "fuse_qkv_projections"):
        try:
            pipe.fuse_qkv_projections()
        except Exception as exc:  # experimental in diffusers; never worth failing a load for
            log.warning("fuse_qkv_projections skipped: %s", exc)


#: below this many input features a linear layer's FP8 scaling costs more than its matmul saves
FP8_MIN_FEATURES = 256


def _quantize_unet_fp8(pipe: Any, device: str) -> None:
    """The UNet's large linear layers as FP8 matmuls (torchao), on GPUs with FP8 tensor cores.

    Why: on Hopper an FP8 matmul runs at twice the fp16 rate, and the attention projections and
    feed-forwards are most of the UNet's GEMMs. Activations are scaled per call (dynamic), so no
    calibration is needed; convolutions stay in fp16. Per-row scales need bf16 outputs in torch's
    scaled matmul, so an fp16 model gets one scale per tensor. Pixels differ slightly from the
    fp16 model's: images record `fp8` in their params, so a replay that differs says why.
    """
    import torch

    capability = torch.cuda.get_device_capability(device)
    if capability < (8, 9):
        raise InvalidRequest(
            f"FP8 needs an NVIDIA GPU with FP8 tensor cores (compute capability 8.9 or newer: Ada, "
            f"Hopper, Blackwell); {torch.cuda.get_device_name(device)} has "
            f"{capability[0]}.{capability[1]}. Turn FP8 off for the local model."
        )
    try:
        from torchao.quantization import (
            Float8DynamicActivationFloat8WeightConfig,
            PerRow,
            PerTensor,
            quantize_,
        )
    except ImportError as exc:
        raise InvalidRequest(f"FP8 needs the torchao package (pip install torchao): {exc}") from exc

    unet = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    if unet is None:
        return
    granularity = PerRow() if unet.dtype == torch.bfloat16 else PerTensor()

    def large_linear(module: Any, _name: str) -> bool:
        return (
            isinstance(module, torch.nn.Linear)
            and module.in_features >= FP8_MIN_FEATURES
            and module.in_features % 16 == 0
            and module.out_features % 16 == 0
        )

    quantize_(
        unet, Float8DynamicActivationFloat8WeightConfig(granularity=granularity), filter_fn=large_linear
    )


def size_multiple(pipe: Any) -> int:
    """The pixel multiple a pipeline accepts, as its own `check_inputs` computes it.

    UNet pipelines (SD 1.5, SDXL) take multiples of the VAE factor (8); DiT pipelines
    (Flux, SD3, Qwen-Image) pack latents into 2×2 patches, so they need twice that.
    """
    factor = int(getattr(pipe, "vae_scale_factor", 8) or 8)
    if getattr(pipe, "transformer", None) is not None:
        factor *= int(getattr(pipe, "patch_size", None) or 2)
    return factor


# --------------------------------------------------------------------------------------
# 4. The GPU thread, and torch.compile warming up on it
# --------------------------------------------------------------------------------------


class GpuWorker:
    """The one thread that makes every pipeline call of a loaded model: requests, retries, warm-ups.

    Why one thread: `torch.compile(mode="reduce-overhead")` replays CUDA graphs through inductor's
    CUDA graph trees, and torch keeps those per Python thread (`torch/_inductor/cudagraph_trees.py`
    holds the tree managers in a `threading.local()`: one manager, one private memory pool and
    one set of recorded graphs per thread). A compiled function binds to the manager of the
    thread that first ran it, and that manager is not meant to be driven from other threads; the
    assistant, meanwhile, calls `run` from a fresh thread per turn and Streamlit from one thread
    per script run. Running all calls here means the graphs the warm-up records are the ones
    every request replays, in one memory pool, and that nothing else touches the model's modules
    while a call is on them (the out-of-memory retry flips attention processors; a warm-up traces
    them). Progress callbacks and cancel work as before: the step callback runs here, and both
    go through thread-safe objects (the caller's queue, the `CancelToken`'s event).

    The one exception keeps compiling from blocking anyone: while a warm-up compiles (minutes on
    a cold cache), a request that can run eagerly runs on its caller's thread instead of
    waiting. Eager calls keep no per-thread state in torch, and the warm-up has its own pipeline
    object and tokenizers; a call that needs the compiled UNet or exclusive use of the modules
    (`exclusive=True`) waits for the warm-up instead. Before it records CUDA graphs, the
    warm-up calls `hold_inline`: the eager calls beside it finish and no new one starts, so no
    other thread's device-wide synchronisation or allocator release lands inside a capture.
    Requests always go before queued warm-ups.
    """

    def __init__(self, name: str) -> None:
        self._cond = threading.Condition()
        self._requests: deque[tuple[Future[Any], Callable[[], Any]]] = deque()
        self._warm_ups: deque[tuple[Future[Any], Callable[[], Any]]] = deque()
        self._warming = False
        self._stopping = False
        #: calls running on their callers' threads beside a warm-up, and how many of those wait
        #: for this thread themselves (an inline request's out-of-memory retry)
        self._inline = 0
        self._inline_waiting = 0
        self._local = threading.local()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    @property
    def ident(self) -> int | None:
        return self._thread.ident

    def is_current(self) -> bool:
        """True when called from this worker's own thread."""
        return threading.get_ident() == self._thread.ident

    def run(self, fn: Callable[[], T], *, exclusive: bool = False, cancel: CancelToken | None = None) -> T:
        """`fn()` on the worker thread, returning its result or raising its exception.

        Called from the worker itself, it runs at once (a request's retry). While a warm-up runs,
        `fn` runs on the calling thread unless `exclusive`; an exclusive call waits its turn, and
        a cancel while it waits withdraws it.
        """
        if self.is_current():
            return fn()
        future: Future[T] = Future()
        nested = bool(getattr(self._local, "inline", False))
        with self._cond:
            if self._stopping:
                raise _unloaded()
            inline = self._warming and not exclusive
            if inline:
                self._inline += 1
            else:
                self._requests.append((future, fn))
                self._inline_waiting += nested
                self._cond.notify_all()
        if inline:
            self._local.inline = True
            try:
                return fn()
            finally:
                self._local.inline = False
                with self._cond:
                    self._inline -= 1
                    self._cond.notify_all()
        try:
            while True:
                try:
                    return future.result(timeout=0.1)
                except TimeoutError:
                    if cancel is not None and cancel.cancelled and future.cancel():
                        raise Cancelled() from None
        finally:
            if nested:
                with self._cond:
                    self._inline_waiting -= 1

    def hold_inline(self) -> None:
        """From a warm-up on this thread: start no more calls beside it, and let those running end.

        Calls that arrive from now on queue and run after the warm-up. A call beside it that is
        itself waiting for this thread (a retry) counts as ended: it runs nothing meanwhile.
        """
        assert self.is_current(), "hold_inline is for the warm-up running on this thread"
        with self._cond:
            self._warming = False
            self._cond.wait_for(lambda: self._inline == self._inline_waiting)

    def warm_up(self, fn: Callable[[], Any]) -> Future[Any]:
        """Queue `fn` behind every request; it runs when no request is waiting."""
        future: Future[Any] = Future()
        with self._cond:
            if self._stopping:
                future.cancel()
                return future
            self._warm_ups.append((future, fn))
            self._cond.notify()
        return future

    def stop(self, timeout: float = 30.0) -> None:
        """Drop what is queued, and wait (a while) for the call in progress to end."""
        with self._cond:
            self._stopping = True
            requests, warm_ups = list(self._requests), list(self._warm_ups)
            self._requests.clear()
            self._warm_ups.clear()
            self._cond.notify()
        for future, _ in warm_ups:
            future.cancel()
        for future, _ in requests:  # someone waits on these: tell them why
            if future.set_running_or_notify_cancel():
                future.set_exception(_unloaded())
        if not self.is_current():
            self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._requests or self._warm_ups or self._stopping))
                if self._stopping:
                    return
                warming = not self._requests
                future, fn = (self._warm_ups if warming else self._requests).popleft()
                self._warming = warming
            try:
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn())
                    except BaseException as exc:  # the caller re-raises it in its own thread
                        future.set_exception(exc)
            finally:
                with self._cond:
                    self._warming = False
                del future, fn  # hold no request's pipelines or images while idle


def _unloaded() -> ModelNotFound:
    return ModelNotFound("The local model was unloaded while this request waited for it; try again.")


@dataclass(frozen=True)
class ShapeKey:
    """What a compiled UNet graph is specialised on; a request uses it only when all of these match."""

    n: int
    height: int
    width: int
    cfg: bool
    scheduler: str


def _compile_unet(unet: Any, mode: str) -> Any:
    """torch.compile with inductor settings scoped to this compile, not set process-wide.

    `options` patches inductor's config only while this module compiles; a mode is the same as
    its `list_mode_options` (torch refuses both at once). The recompile limit is per compiled
    region where this torch takes it as an argument, and raised globally (never lowered) where not.
    """
    import torch
    import torch._inductor

    options: dict[str, Any] = {
        **torch._inductor.list_mode_options(mode, dynamic=False),
        "fx_graph_cache": True,  # compiled graphs on disk: the next process compiles in seconds
        "conv_1x1_as_mm": True,  # the UNet's many 1×1 convolutions as GEMMs
    }
    limit: dict[str, Any] = {}
    if "recompile_limit" in inspect.signature(torch.compile).parameters:
        limit["recompile_limit"] = MAX_COMPILED_SHAPES
    else:
        import torch._dynamo.config as dynamo_config

        name = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
        setattr(dynamo_config, name, max(getattr(dynamo_config, name), MAX_COMPILED_SHAPES))
    return torch.compile(unet, options=options, dynamic=False, **limit)


def _contiguous_inputs(
    module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Give the compiled UNet one memory layout whatever the pipeline made.

    Compiled graphs guard on strides. Text-to-image latents come from `randn` (contiguous), but
    image-to-image and inpainting latents come out of the VAE encoder in channels-last layout
    (PIL → numpy HWC → permuted tensor); without this, the first such request would recompile
    inside the request. Copying a latent per step costs microseconds.
    """
    return tuple(_contiguous(a) for a in args), {k: _contiguous(v) for k, v in kwargs.items()}


def _contiguous(value: Any) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        return value.contiguous()
    if isinstance(value, dict):
        return {k: _contiguous(v) for k, v in value.items()}
    return value


def use_compile_cache(folder: Path) -> Path | None:
    """Point inductor's caches (FX graphs, autotuning, Triton kernels) at a folder that outlives /tmp.

    Why the environment: torch (2.13, as earlier releases) has no config attribute for this. Inductor finds
    its cache only through TORCHINDUCTOR_CACHE_DIR (`torch/_inductor/runtime/cache_dir_utils.py`
    reads it on every cache access, and on first use writes its /tmp default back into
    os.environ), and Triton's cache follows it unless TRITON_CACHE_DIR is set. So this runs
    once per backend, when it is made and before anything compiles, and it never replaces a
    folder the user chose: only an unset variable, or the /tmp default torch filled in itself,
    is pointed here. Returns the folder now in use when it is ours, None when the user's is kept.
    """
    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if current is not None and os.path.abspath(current) != _inductor_default_cache_dir():
        return None if os.path.abspath(current) != os.path.abspath(folder) else folder
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    return folder


def _inductor_default_cache_dir() -> str | None:
    """The /tmp folder inductor falls back to (and writes into the environment itself)."""
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    except ImportError:  # torch before the runtime/ split kept it here
        try:
            from torch._inductor.utils import default_cache_dir  # type: ignore[attr-defined,no-redef]
        except ImportError:
            return None
    return os.path.abspath(default_cache_dir())


class UnetCompiler:
    """Compiles the UNet for the shapes requests use, on the model's GPU thread, between requests.

    A compiled graph is specialised on its input shapes; calling it with a new shape recompiles
    inside the caller, which would block a request for minutes. So each request shape is first
    served eagerly and queued here; a warm-up job on the GPU thread runs the compiled UNet in a
    2-step latent-only call of a private text-to-image pipeline (same weights, own scheduler: the
    exact call path and guards of a real request), and only then do requests with that shape use
    it. With a CUDA-graph mode, that warm-up also records the graphs, on the same thread that
    later replays them (see `GpuWorker`).
    """

    def __init__(self, loaded: LoadedModel, mode: str) -> None:
        self.loaded = loaded
        self.mode = mode
        #: reduce-overhead and max-autotune replay CUDA graphs, recorded by the warm-up's 2nd step
        self.records_cuda_graphs = mode in ("reduce-overhead", "max-autotune")
        self.ready: set[ShapeKey] = set()
        self.failed: str | None = None
        self._seen: set[ShapeKey] = set()
        self._count_lock = threading.Lock()
        self._pending = 0
        self._idle = threading.Event()
        self._idle.set()
        self._stopping = False
        self.compiled = _compile_unet(loaded.unet, mode)  # lazy: nothing compiles before a call
        # runs eagerly, before the compiled graph: see _contiguous_inputs
        self.compiled.register_forward_pre_hook(_contiguous_inputs, with_kwargs=True)
        self._warm_pipe: Any = None

    def unet_for(self, key: ShapeKey) -> Any | None:
        """The compiled UNet if `key` is warm; otherwise queue it and return None (serve eagerly)."""
        if key in self.ready:
            return self.compiled
        self.request(key)
        return None

    def request(self, key: ShapeKey) -> None:
        with self._count_lock:
            if self.failed is not None or key in self._seen or len(self._seen) >= MAX_COMPILED_SHAPES:
                return
            self._seen.add(key)
            self._pending += 1
            self._idle.clear()
        future = self.loaded.worker.warm_up(lambda: self._job(key))
        future.add_done_callback(self._done)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every queued shape is compiled (benchmarks, warm-up at start); True if done."""
        return self._idle.wait(timeout)

    def stop(self) -> None:
        """Skip the warm-ups still queued (the GPU thread's `stop` drops them)."""
        self._stopping = True

    def _done(self, _: Future[Any]) -> None:
        with self._count_lock:
            self._pending -= 1
            if self._pending == 0:
                self._idle.set()

    def _job(self, key: ShapeKey) -> None:
        if self.failed is not None or self._stopping:
            return
        try:
            started = time.perf_counter()
            self._warm(key)
            self.ready.add(key)
            log.info("compiled UNet for %s in %.0fs", key, time.perf_counter() - started)
        except Exception as exc:
            # a compile failure costs speed, never a request: stay eager from now on
            self.failed = f"{type(exc).__name__}: {exc}"
            log.warning("torch.compile of the UNet failed; serving uncompiled: %s", self.failed)

    def _warm(self, key: ShapeKey) -> None:
        import torch
        from diffusers import AutoPipelineForText2Image

        if self._warm_pipe is None:
            base = self.loaded.base
            # Requests may run eagerly meanwhile, on the same tokenizers. A fast tokenizer keeps its
            # padding and truncation mode on the shared Rust object, so two threads interleaving get
            # each other's mode (a 2-token prompt where 77 were expected). The warm-up gets copies.
            own = {
                name: copy.deepcopy(getattr(base, name))
                for name in ("tokenizer", "tokenizer_2")
                if getattr(base, name, None) is not None
            }
            self._warm_pipe = AutoPipelineForText2Image.from_pipe(base, unet=self.compiled, **own)
            self._warm_pipe.set_progress_bar_config(disable=True)
        self._warm_pipe.scheduler = self.loaded.make_scheduler(key.scheduler)
        device = self.loaded.key.device
        worker = self.loaded.worker

        def before_recording(pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            # The first UNet call compiled the graph (and warmed CUDA graph trees' pool); the
            # second records the CUDA graphs: nothing may run beside that.
            if step == 0 and self.records_cuda_graphs:
                worker.hold_inline()
            return kwargs

        self._warm_pipe(
            prompt="warm-up",
            height=key.height,
            width=key.width,
            num_images_per_prompt=key.n,
            num_inference_steps=2,
            guidance_scale=DEFAULT_GUIDANCE if key.cfg else 1.0,
            generator=[torch.Generator(device=device).manual_seed(0) for _ in range(key.n)],
            output_type="latent",
            callback_on_step_end=before_recording,
        )


# --------------------------------------------------------------------------------------
# 5. The backend
# --------------------------------------------------------------------------------------


@dataclass
class _Plan:
    """A request after the checks that need no model: every value the pipeline call will use."""

    kind: Kind
    prompt: str
    negative_prompt: str | None
    width: int
    height: int
    n: int
    seeds: list[int]
    steps: int
    guidance: float
    strength: float | None
    scheduler: str
    generator_device: str
    source: PILImage.Image | None = None
    mask: PILImage.Image | None = None
    notes: list[str] = field(default_factory=list)
    #: set when an out-of-memory retry ran with sliced attention (pixels may differ by a level)
    low_memory: bool = False


class DiffusersBackend:
    """Text-to-image, image-to-image and inpainting on one local diffusers model.

    variation = image-to-image of the source with the same prompt and a new seed (strength 0.5);
    edit = image-to-image with the new prompt (inpainting when a mask comes with it).
    """

    name = NAME

    def __init__(
        self,
        model: str,
        *,
        device: str | None = None,
        dtype: str | None = None,
        scheduler: str | None = None,
        compile: bool = False,
        enable_offload: bool = False,
        local_files_only: bool = False,
        compile_mode: str = DEFAULT_COMPILE_MODE,
        cache_dir: str | os.PathLike[str] | None = None,
        fp8: bool = False,
    ) -> None:
        self.model = model
        self.source = check_model_source(model, local_files_only=local_files_only)
        self.capabilities: frozenset[Operation] = (
            frozenset({Operation.INPAINT, Operation.EDIT}) if self.source.inpaint_only else CAPABILITIES
        )
        self.scheduler = scheduler_name(scheduler)
        if compile_mode not in COMPILE_MODES:
            raise InvalidRequest(
                f"Unknown compile mode {compile_mode!r}; use one of {', '.join(COMPILE_MODES)}."
            )
        self.device = _pick_device(device)
        self.dtype = _dtype_name(dtype, self.device)
        self.enable_offload = enable_offload and self.device.startswith("cuda")
        #: said with the first image only: a setting that does nothing here should not pass unseen
        self._first_notes: list[str] = []
        if enable_offload and not self.enable_offload:
            self._first_notes.append(
                f"CPU offload is for CUDA GPUs; on {self.device} the model already runs from RAM, "
                "so it is off."
            )
        # offload hooks move the UNet between devices under a compiled graph's feet
        self.compile = compile and not self.enable_offload
        self.compile_mode = compile_mode
        if fp8 and not self.device.startswith("cuda"):
            raise InvalidRequest(
                f"FP8 runs on NVIDIA GPUs only (FP8 tensor cores); this model runs on {self.device}. "
                "Turn FP8 off for the local model."
            )
        if fp8 and self.enable_offload:
            raise InvalidRequest(
                "FP8 and CPU offload do not combine; FP8 already halves the UNet's weights. "
                "Turn one of them off for the local model."
            )
        self.fp8 = fp8
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        #: where inductor keeps compiled graphs for the next process; None: torch's own (or the user's)
        self.compile_cache: Path | None = None
        if self.compile and self.cache_dir is not None:
            self.compile_cache = use_compile_cache(self.cache_dir / "torchinductor")
        self._key = LoadKey(
            model=self.source.location,
            device=self.device,
            dtype=self.dtype,
            enable_offload=self.enable_offload,
            local_files_only=local_files_only,
            fp8=fp8,
        )

    # -- loading -------------------------------------------------------------------------

    def load(self) -> LoadedModel:
        """Load now (the first request does it otherwise); cheap after the first call in a process."""
        loaded = load_model(self._key, self.source)
        if self.compile:
            loaded.enable_compile(self.compile_mode)
        return loaded

    def warm_up(
        self, width: int = 512, height: int = 512, n: int = 1, guidance: float = DEFAULT_GUIDANCE
    ) -> None:
        """Queue a background compile for a shape, so its first request is already fast."""
        loaded = self.load()
        if loaded.compiler is not None:
            width, height = (
                _round_down(width, loaded.size_multiple),
                _round_down(height, loaded.size_multiple),
            )
            loaded.compiler.request(ShapeKey(n, height, width, guidance > 1.0, self.scheduler))

    def wait_for_compile(self, timeout: float | None = None) -> bool:
        """True once every queued compile is done (or there is nothing to compile)."""
        compiler = self.load().compiler
        return True if compiler is None else compiler.wait(timeout)

    # -- one request -----------------------------------------------------------------------

    def estimate_cost(self, request: ImageRequest) -> float | None:
        return 0.0  # runs on this machine

    def run(
        self,
        request: ImageRequest,
        progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
    ) -> ImageResult:
        check_capability(self, request.operation)
        plan = self._plan(request)
        if cancel is not None and cancel.cancelled:
            raise Cancelled()
        loaded = self.load()
        self._fit_size(plan, loaded.size_multiple)
        pipe = loaded.pipeline(plan.kind)
        self._check_prompt_length(pipe, plan)

        def call() -> tuple[list[PILImage.Image], set[int], Any, bool]:
            scheduler = loaded.make_scheduler(plan.scheduler)
            pipe.scheduler = scheduler
            unet = self._pick_unet(loaded, plan)
            try:
                if unet is not None:
                    pipe.unet = unet
                images, flagged = self._denoise(loaded, pipe, plan, progress, cancel)
            finally:
                if unet is not None:
                    pipe.unet = loaded.unet
            return images, flagged, scheduler, unet is not None

        with loaded.lock:  # one request at a time on these pipelines, on the model's GPU thread
            images, flagged, scheduler, compiled = loaded.worker.run(call, cancel=cancel)

        if flagged:
            if len(flagged) == len(images):
                raise ContentPolicyViolation(
                    "The model's safety checker blocked every image; try a different prompt.",
                    "safety_checker",
                )
            plan.notes.append(f"{len(flagged)} of {len(images)} images were blocked by the safety checker.")
            images = [image for i, image in enumerate(images) if i not in flagged]
            seeds = [seed for i, seed in enumerate(plan.seeds) if i not in flagged]
        else:
            seeds = plan.seeds
        result = ImageResult(
            images=[
                GeneratedImage(image=image, seed=seed) for image, seed in zip(images, seeds, strict=True)
            ],
            backend=self.name,
            model=self.model,
            params=self._params(loaded, pipe, plan, scheduler, compiled=compiled),
            notes=[*self._first_notes, *plan.notes],
        )
        self._first_notes = []
        return result

    def _plan(self, request: ImageRequest) -> _Plan:
        """Every check that needs no model, so a bad request fails in microseconds, not after a load.

        Images come through the same door as on every backend (`tools.image_input`): the source is
        loaded, within the pixel limit and RGB (transparency flattened onto white); the mask is
        one channel fitted to the source, or refused when its shape differs or nothing is marked.
        `_fit_size` then brings both to the size the model makes.
        """
        op = request.operation
        if op in (Operation.GENERATE, Operation.EDIT) and not request.prompt.strip():
            raise InvalidRequest("Describe the image you want; the prompt is empty.")
        if op == Operation.INPAINT and request.mask is None:
            raise InvalidRequest("Inpainting needs a mask: paint the area to change.")
        if op == Operation.GENERATE:
            kind: Kind = "text2img"
        elif request.mask is not None and op in (Operation.INPAINT, Operation.EDIT):
            kind = "inpaint"
        else:
            kind = "img2img"
        if self.source.inpaint_only and kind != "inpaint":
            # its capabilities say "edit" (an edit with a mask is an inpaint): name what is missing
            raise InvalidRequest(
                f"{self.model} is an inpainting model: it only repaints a masked area. Attach a mask "
                "(white where the picture should change), or set ATELIER_DIFFUSERS_MODEL to a "
                f"text-to-image model for a{'n' if op.value[0] in 'aeiou' else ''} {op.value} without one."
            )
        source: PILImage.Image | None = None
        mask: PILImage.Image | None = None
        notes: list[str] = []
        if op != Operation.GENERATE:
            if not request.sources:
                raise InvalidRequest(f"{op.value.capitalize()} needs a source image.")
            (checked,), source_notes = check_sources(request.sources[:1])
            notes += source_notes
            if len(request.sources) > 1:
                notes.append("This model takes one source image; only the first was used.")
            source = _opaque(checked, notes)
            if request.mask is not None:
                if kind == "inpaint":
                    mask, mask_notes = prepare_mask(request.mask, source.size)
                    notes += mask_notes
                else:
                    notes.append(f"A {op.value} changes the whole image; the mask was ignored.")

        if not 1 <= request.n <= MAX_IMAGES:
            raise InvalidRequest(f"Ask for 1 to {MAX_IMAGES} images at a time (got {request.n}).")
        if not (1 <= request.width <= MAX_SIDE and 1 <= request.height <= MAX_SIDE):
            raise InvalidRequest(f"Width and height must be between 1 and {MAX_SIDE} pixels.")
        steps = DEFAULT_STEPS if request.steps is None else request.steps
        if not 1 <= steps <= MAX_STEPS:
            raise InvalidRequest(f"Steps must be between 1 and {MAX_STEPS} (got {steps}).")
        guidance = DEFAULT_GUIDANCE if request.guidance is None else float(request.guidance)
        if not 0.0 <= guidance <= MAX_GUIDANCE:
            raise InvalidRequest(f"Guidance must be between 0 and {MAX_GUIDANCE:g} (got {guidance:g}).")
        strength: float | None = None
        if kind != "text2img":
            strength = DEFAULT_STRENGTH[op] if request.strength is None else float(request.strength)
            if not 0.0 < strength <= 1.0:
                raise InvalidRequest(f"Strength must be above 0 and at most 1 (got {strength:g}).")
            if int(steps * strength) < 1:
                raise InvalidRequest(
                    f"{steps} steps at strength {strength:g} leave no denoising step; "
                    f"use at least {int(1 / strength) + 1} steps."
                )
        seed = secrets.randbelow(2**32) if request.seed is None else request.seed
        if not 0 <= seed < 2**32:
            raise InvalidRequest(f"Seeds are whole numbers from 0 to {2**32 - 1} (got {seed}).")
        options = request.options
        scheduler = scheduler_name(options.get("scheduler") or options.get("sampler") or self.scheduler)
        return _Plan(
            kind=kind,
            prompt=request.prompt,
            negative_prompt=request.negative_prompt or None,
            width=request.width,
            height=request.height,
            n=request.n,
            seeds=derive_seeds(seed, request.n),
            steps=steps,
            guidance=guidance,
            strength=strength,
            scheduler=scheduler,
            generator_device=self._generator_device(options.get("generator_device"), notes),
            source=source,
            mask=mask,
            notes=notes,
        )

    def _generator_device(self, asked: Any, notes: list[str]) -> str:
        """Noise comes from the GPU on CUDA (diffusers' advice); 'cpu' gives noise equal across machines.

        A replay passes back the recorded `generator_device`; CUDA noise cannot be made without
        a GPU, so such a replay runs with CPU noise and says the image will differ.
        """
        on_gpu = self.device.startswith("cuda")
        if asked in (None, "", "device"):
            return self.device if on_gpu else "cpu"
        if asked == "cpu":
            return "cpu"
        if isinstance(asked, str) and asked.startswith("cuda"):
            if on_gpu:
                return self.device
            notes.append("These seeds were first drawn on a CUDA GPU; without one the images will differ.")
            return "cpu"
        raise InvalidRequest(f"generator_device must be 'cpu' or 'device' (got {asked!r}).")

    @staticmethod
    def _fit_size(plan: _Plan, multiple: int) -> None:
        """Round down to what the model accepts, and bring the source (and mask) to that size.

        Image-to-image pipelines make the source's size, whatever height/width say, and the
        inpainting one makes the UNet's default size unless told; resizing here makes every
        operation return exactly the size recorded in params.
        """
        width, height = _round_down(plan.width, multiple), _round_down(plan.height, multiple)
        if (width, height) != (plan.width, plan.height):
            plan.notes.append(
                f"Size rounded to {width}×{height} (this model needs multiples of {multiple} pixels; "
                f"asked for {plan.width}×{plan.height})."
            )
            plan.width, plan.height = width, height
        if plan.source is not None and plan.source.size != (width, height):
            src_w, src_h = plan.source.size
            if abs(src_w / src_h - width / height) > 0.01:
                plan.notes.append(f"The {src_w}×{src_h} source was stretched to {width}×{height}.")
            plan.source = plan.source.resize((width, height), PILImage.Resampling.LANCZOS)
            if plan.mask is not None:
                plan.mask = plan.mask.resize((width, height), PILImage.Resampling.NEAREST)

    @staticmethod
    def _check_prompt_length(pipe: Any, plan: _Plan) -> None:
        """CLIP reads 77 tokens and drops the rest with only a log line; tell the user instead."""
        tokenizer = getattr(pipe, "tokenizer", None)
        limit = getattr(tokenizer, "model_max_length", None)
        if tokenizer is None or not isinstance(limit, int) or limit > 100_000:
            return
        for label, text in (("prompt", plan.prompt), ("negative prompt", plan.negative_prompt)):
            if text and len(tokenizer(text, truncation=False).input_ids) > limit:
                plan.notes.append(
                    f"The {label} is longer than the {limit} tokens this model reads; the end was cut."
                )

    def _pick_unet(self, loaded: LoadedModel, plan: _Plan) -> Any | None:
        """The compiled UNet when this request's shape is warm; None keeps the eager one.

        Only on the GPU thread: a request served on its caller's thread while a warm-up compiles
        stays eager, since CUDA graphs replay only on the thread that recorded them.
        """
        compiler = loaded.compiler
        if compiler is None or loaded.unet is None:
            return None
        if not self.compile or compiler.mode != self.compile_mode:
            # compile switched off (or to another mode, which needs a fresh load): stay eager
            return None
        if loaded.unet.config.in_channels != 4:  # inpainting UNets: warm-up runs text-to-image
            return None
        key = ShapeKey(plan.n, plan.height, plan.width, plan.guidance > 1.0, plan.scheduler)
        if not loaded.worker.is_current():
            compiler.request(key)
            return None
        return compiler.unet_for(key)

    # -- the denoising loop, with progress, cancel and the out-of-memory retry ---------------

    def _denoise(
        self,
        loaded: LoadedModel,
        pipe: Any,
        plan: _Plan,
        progress: ProgressCallback | None,
        cancel: CancelToken | None,
    ) -> tuple[list[PILImage.Image], set[int]]:
        try:
            return self._call(pipe, plan, plan.seeds, 0, 1, progress, cancel)
        except Exception as exc:
            if not _is_oom(exc):
                raise
        # The retry changes the shared modules (attention processors, VAE slicing), so it runs on
        # the GPU thread, never beside a compile warm-up: after the one in progress, if any.
        return loaded.worker.run(
            lambda: self._retry_low_memory(loaded, pipe, plan, progress, cancel),
            exclusive=True,
            cancel=cancel,
        )

    def _retry_low_memory(
        self,
        loaded: LoadedModel,
        pipe: Any,
        plan: _Plan,
        progress: ProgressCallback | None,
        cancel: CancelToken | None,
    ) -> tuple[list[PILImage.Image], set[int]]:
        """Out of memory: give back what the failed call held, then once more the slow, frugal way."""
        pipe.unet = loaded.unet
        _free_memory()
        plan.low_memory = True
        plan.notes.append(
            "Ran out of GPU memory; made the images one at a time with sliced attention and a tiled VAE."
        )
        images: list[PILImage.Image] = []
        flagged: set[int] = set()
        with _low_memory(pipe):
            for i, seed in enumerate(plan.seeds):
                try:
                    got, bad = self._call(pipe, plan, [seed], i, len(plan.seeds), progress, cancel)
                except Exception as exc:
                    if not _is_oom(exc):
                        raise
                    _free_memory()
                    raise OutOfMemory(
                        f"Not enough GPU memory for {plan.width}×{plan.height}, even one image at a time. "
                        "Try a smaller size or turn on CPU offload for the local model."
                    ) from exc
                images.extend(got)
                if bad:
                    flagged.add(i)
        return images, flagged

    def _call(
        self,
        pipe: Any,
        plan: _Plan,
        seeds: list[int],
        chunk: int,
        chunks: int,
        progress: ProgressCallback | None,
        cancel: CancelToken | None,
    ) -> tuple[list[PILImage.Image], set[int]]:
        """One pipeline call; the step callback is the only link to the UI (progress and cancel)."""
        import torch

        interrupted = False

        def on_step_end(
            pipe: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]
        ) -> dict[str, Any]:
            nonlocal interrupted
            total = int(getattr(pipe, "num_timesteps", 0) or plan.steps)
            if progress is not None:
                progress(chunk * total + step + 1, chunks * total)
            if cancel is not None and cancel.cancelled:
                pipe._interrupt = True  # diffusers skips the remaining steps
                interrupted = True
            return callback_kwargs

        kwargs: dict[str, Any] = {
            "prompt": plan.prompt,
            "negative_prompt": plan.negative_prompt,
            # always explicit: the inpainting pipeline otherwise returns the UNet's default size
            "height": plan.height,
            "width": plan.width,
            "num_images_per_prompt": len(seeds),
            "num_inference_steps": plan.steps,
            "guidance_scale": plan.guidance,
            "generator": [torch.Generator(device=plan.generator_device).manual_seed(s) for s in seeds],
            "callback_on_step_end": on_step_end,
            "output_type": "pil",
        }
        if plan.kind != "text2img":
            kwargs["image"] = plan.source
            kwargs["strength"] = plan.strength
        if plan.kind == "inpaint":
            kwargs["mask_image"] = plan.mask
        # image-to-image pipelines take no size (they swallow it in **kwargs): the source was
        # already resized to it, and nothing a pipeline does not declare is passed
        accepted = _call_parameters(pipe)
        if plan.negative_prompt and "negative_prompt" not in accepted and chunk == 0:
            plan.notes.append(f"{type(pipe).__name__} takes no negative prompt; it was left out.")
        kwargs = {k: v for k, v in kwargs.items() if k in accepted}
        vae: Any = getattr(pipe, "vae", None)
        if hasattr(vae, "enable_tiling"):
            # tiles cost time, so only where a whole-image decode would be large or memory is short
            if self.enable_offload or plan.low_memory or plan.width * plan.height > TILE_VAE_ABOVE:
                vae.enable_tiling()
            else:
                vae.disable_tiling()

        output = pipe(**kwargs)
        if interrupted or (cancel is not None and cancel.cancelled):
            raise Cancelled()
        nsfw = getattr(output, "nsfw_content_detected", None) or []
        return list(output.images), {i for i, hit in enumerate(nsfw) if hit}

    def _params(
        self, loaded: LoadedModel, pipe: Any, plan: _Plan, scheduler: Any, *, compiled: bool
    ) -> dict[str, Any]:
        """Everything a replay needs to land on the same pixels, stored as the image's params."""
        import diffusers
        import torch

        params: dict[str, Any] = {
            "steps": plan.steps,
            "guidance": plan.guidance,
            "sampler": plan.scheduler if plan.scheduler != "default" else sampler_label(scheduler),
            "scheduler": type(scheduler).__name__,
            "width": plan.width,
            "height": plan.height,
            "seeds": plan.seeds,
            "batch_size": plan.n,
            "generator": "torch.Generator",
            "generator_device": plan.generator_device,
            "device": self.device,
            "dtype": self.dtype,
            "pipeline": type(pipe).__name__,
            "compiled": compiled,
            "diffusers": diffusers.__version__,
            "torch": torch.__version__,
        }
        if plan.strength is not None:
            params["strength"] = plan.strength
        if compiled and loaded.compiler is not None:
            params["compile_mode"] = loaded.compiler.mode
        if loaded.key.enable_offload:
            params["offload"] = True
        if loaded.key.fp8:
            params["fp8"] = True
        if plan.low_memory:
            params["low_memory"] = True
        return params


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def _opaque(image: PILImage.Image, notes: list[str]) -> PILImage.Image:
    """RGB for the VAE; see-through areas become white rather than whatever colour they hide."""
    if image.mode != "RGBA":
        return image.convert("RGB")
    low, _ = image.getchannel("A").getextrema()
    if low == 255:
        return image.convert("RGB")
    notes.append("The source image has transparent areas; they were filled with white.")
    flat = PILImage.new("RGB", image.size, (255, 255, 255))
    flat.paste(image, mask=image.getchannel("A"))
    return flat


def _round_down(value: int, multiple: int) -> int:
    return max(multiple, value - value % multiple)


def _call_parameters(pipe: Any) -> frozenset[str]:
    """What a pipeline's __call__ declares; most also take **kwargs and silently drop the rest."""
    name = type(pipe).__qualname__
    if name not in _CALL_PARAMETERS:
        _CALL_PARAMETERS[name] = frozenset(inspect.signature(type(pipe).__call__).parameters)
    return _CALL_PARAMETERS[name]


_CALL_PARAMETERS: dict[str, frozenset[str]] = {}


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


def _free_memory() -> None:
    gc.collect()
    try:
        import torch
    except ImportError:
        return
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@contextmanager
def _low_memory(pipe: Any) -> Iterator[None]:
    """Sliced attention and a sliced VAE for one retry (the call tiles the VAE), then the fast settings.

    Slicing is slow next to SDPA, so the processors in use before (SDPA or fused) come back after.
    """
    modules: dict[str, Any] = {name: getattr(pipe, name, None) for name in ("unet", "transformer", "vae")}
    saved = {name: m.attn_processors for name, m in modules.items() if hasattr(m, "attn_processors")}
    vae: Any = getattr(pipe, "vae", None)
    slicing = getattr(vae, "use_slicing", False)
    tiling = getattr(vae, "use_tiling", False)
    pipe.enable_attention_slicing("auto")
    if hasattr(vae, "enable_slicing"):
        vae.enable_slicing()
    try:
        yield
    finally:
        for name, processors in saved.items():
            getattr(pipe, name).set_attn_processor(processors)
        if vae is not None:
            vae.use_slicing, vae.use_tiling = slicing, tiling


__all__ = [
    "CAPABILITIES",
    "SCHEDULERS",
    "CacheInfo",
    "Cancelled",
    "DiffusersBackend",
    "LoadKey",
    "LoadedModel",
    "ModelSource",
    "cache_info",
    "check_model_source",
    "clear_cache",
    "load_model",
    "sampler_label",
    "scheduler_name",
    "size_multiple",
]
