"""Settings → the image backend to use. Heavy imports happen only for the backend chosen."""

from __future__ import annotations

import threading

from assistant.settings import BackendChoice, Settings
from tools.base import ImageBackend

_diffusers_lock = threading.Lock()


def make_backend(settings: Settings, choice: BackendChoice | None = None) -> ImageBackend:
    choice = choice or settings.effective_backend
    if choice is BackendChoice.AUTO:
        choice = settings.effective_backend
    if choice is BackendChoice.OPENAI:
        from tools.openai_images import OpenAIImagesBackend

        key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
        return OpenAIImagesBackend(
            api_key=key,
            model=settings.openai_image_model,
            base_url=settings.openai_base_url,
            timeout=settings.openai_timeout,
            max_retries=settings.openai_max_retries,
            total_timeout=settings.openai_total_timeout,
            quality=settings.openai_image_quality,
        )
    if choice is BackendChoice.DIFFUSERS:
        from tools.base import ModelNotFound
        from tools.diffusers_local import DiffusersBackend

        if not settings.diffusers_model:
            raise ModelNotFound(
                "No local model configured: set ATELIER_DIFFUSERS_MODEL to a diffusers folder or hub id."
            )
        with _diffusers_lock:
            return DiffusersBackend(
                settings.diffusers_model,
                device=settings.diffusers_device,
                compile=settings.diffusers_compile,
                compile_mode=settings.diffusers_compile_mode,
                enable_offload=settings.diffusers_offload,
                fp8=settings.diffusers_fp8,
                cache_dir=settings.data_dir / "cache",
            )
    from tools.offline import OfflineBackend

    return OfflineBackend()


def release_local_models() -> None:
    """Free the weights of local diffusers models this process loaded.

    The weights live in the diffusers adapter's process-wide cache, not in the backend object,
    so dropping a backend alone frees nothing. The adapter is looked up, not imported: when it
    was never imported nothing was loaded, and importing it would pull in torch.
    """
    import gc
    import sys

    module = sys.modules.get("tools.diffusers_local")
    clear = getattr(module, "clear_cache", None)
    if callable(clear):
        clear()
    gc.collect()


def backend_banner(settings: Settings) -> str:
    """One line telling a new user what is active and how to connect a real model."""
    choice = settings.effective_backend
    planner = (
        f"the LLM agent ({settings.effective_chat_model})"
        if settings.effective_chat_model
        else "the offline planner (rules, no LLM)"
    )
    if choice is BackendChoice.OFFLINE:
        return (
            f"Images: the built-in offline sketch renderer (not a neural model); planning: {planner}. "
            "Set OPENAI_API_KEY for OpenAI images, or ATELIER_DIFFUSERS_MODEL=<folder or hub id> "
            "for a local Stable Diffusion model."
        )
    if choice is BackendChoice.OPENAI:
        return f"Images: OpenAI ({settings.openai_image_model}); planning: {planner}."
    if not settings.diffusers_model:
        return (
            "Images: local diffusers model, but no model set: "
            f"set ATELIER_DIFFUSERS_MODEL=/path/to/model; planning: {planner}."
        )
    return f"Images: local diffusers model {settings.diffusers_model}; planning: {planner}."
