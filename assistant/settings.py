"""Atelier's settings: one pydantic-settings class, read once and passed down.

Every name is `ATELIER_<FIELD>` in the environment (outside scripts rely on them), except
`OPENAI_API_KEY`, which is read under its usual name so an existing OpenAI setup just works.
Modules never read `os.environ` themselves; they receive a `Settings`.
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import platformdirs
from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class BackendChoice(StrEnum):
    AUTO = "auto"
    OFFLINE = "offline"
    OPENAI = "openai"
    DIFFUSERS = "diffusers"


class ChatFailureMode(StrEnum):
    """What a turn does when the configured chat model cannot be reached."""

    FALLBACK = "fallback"
    FAIL = "fail"


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("atelier", appauthor=False))


#: The one host OPENAI_API_KEY may be sent to on its own (as the chat key).
OPENAI_API_HOST = "api.openai.com"
#: The chat model used when only OPENAI_API_KEY is set.
DEFAULT_OPENAI_CHAT_MODEL = "gpt-5-mini"
DEFAULT_OPENAI_IMAGE_MODEL = "gpt-image-2"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ATELIER_", extra="ignore", populate_by_name=True)

    data_dir: Path = Field(default_factory=default_data_dir)
    #: may hold a password (postgresql://user:pw@host/db): kept out of repr, masked in `masked()`
    database_url: str | None = Field(default=None, repr=False)

    backend: BackendChoice = BackendChoice.AUTO
    diffusers_model: str | None = None
    diffusers_device: str | None = None
    diffusers_compile: bool = False
    #: torch.compile mode: reduce-overhead (CUDA graphs) · max-autotune · max-autotune-no-cudagraphs · default
    diffusers_compile_mode: str = "reduce-overhead"
    diffusers_offload: bool = False
    #: the UNet's large linear layers as FP8 matmuls (torchao; Ada/Hopper/Blackwell GPUs)
    diffusers_fp8: bool = False

    openai_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("OPENAI_API_KEY", "openai_api_key")
    )
    openai_base_url: str | None = None
    openai_image_model: str = DEFAULT_OPENAI_IMAGE_MODEL
    #: low · medium · high · auto; None leaves it to the server (auto). The main cost knob.
    openai_image_quality: str | None = None
    #: seconds for one try; `openai_total_timeout` bounds all tries of one request together
    openai_timeout: float = 120.0
    openai_max_retries: int = 2
    openai_total_timeout: float = 300.0

    chat_base_url: str | None = None
    chat_model: str | None = None
    chat_api_key: SecretStr | None = None
    chat_on_failure: ChatFailureMode = ChatFailureMode.FALLBACK
    chat_max_tool_calls: int = 6
    chat_timeout: float = 60.0
    chat_history_tokens: int = 2000

    #: None: the backend's natural size (512² offline, 1024² on OpenAI, the model's own on diffusers)
    width: int | None = None
    height: int | None = None
    steps: int = 25
    guidance: float = 7.0
    style: str | None = None
    verbatim: bool = False
    seed: int | None = None

    max_n: int = 4
    max_side: int = 2048
    max_steps: int = 150
    max_pixels_per_turn: int = 4096 * 4096
    #: Optional spending cap per conversation for paid backends, in US dollars.
    cost_budget_usd: float | None = None
    max_message_chars: int = 20_000

    @model_validator(mode="after")
    def _blank_strings_are_unset(self) -> Settings:
        """An empty env var (ATELIER_CHAT_MODEL=) means 'not configured', not a model named ''."""
        blankable = (
            "database_url",
            "diffusers_model",
            "openai_base_url",
            "openai_image_quality",
            "chat_base_url",
            "chat_model",
        )
        for name in blankable:
            if getattr(self, name) == "":
                setattr(self, name, None)
        for name in ("openai_api_key", "chat_api_key"):
            secret = getattr(self, name)
            if secret is not None and not secret.get_secret_value().strip():
                setattr(self, name, None)
        return self

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'atelier.db'}"

    @property
    def images_dir(self) -> Path:
        return self.data_dir / "images"

    @property
    def effective_backend(self) -> BackendChoice:
        """`auto`: a configured local model wins, then OpenAI when a key is set, else offline."""
        if self.backend is not BackendChoice.AUTO:
            return self.backend
        if self.diffusers_model:
            return BackendChoice.DIFFUSERS
        if self.openai_api_key is not None:
            return BackendChoice.OPENAI
        return BackendChoice.OFFLINE

    @property
    def chat_endpoint_is_openai(self) -> bool:
        """True when the chat endpoint is OpenAI's own API (no base URL, or https://api.openai.com/…).

        Only then may OPENAI_API_KEY stand in for ATELIER_CHAT_API_KEY: a key for OpenAI must
        never travel to Ollama, vLLM or whatever server ATELIER_CHAT_BASE_URL names.
        """
        if not self.chat_base_url:
            return True
        try:
            parts = urlsplit(self.chat_base_url.strip())
            port = parts.port
        except ValueError:  # a malformed URL is nobody's, least of all OpenAI's
            return False
        return parts.scheme.lower() == "https" and parts.hostname == OPENAI_API_HOST and port in (None, 443)

    @property
    def effective_chat_api_key(self) -> SecretStr | None:
        """ATELIER_CHAT_API_KEY; else OPENAI_API_KEY, but only when the chat endpoint is OpenAI."""
        if self.chat_api_key is not None:
            return self.chat_api_key
        return self.openai_api_key if self.chat_endpoint_is_openai else None

    @property
    def effective_chat_model(self) -> str | None:
        """The LLM agent plans when a chat model is configured, or OpenAI is reachable by key."""
        if self.chat_model:
            return self.chat_model
        if self.chat_endpoint_is_openai and self.effective_chat_api_key is not None:
            return DEFAULT_OPENAI_CHAT_MODEL
        return None

    def masked(self) -> dict[str, Any]:
        """Effective settings for display: secrets shown only as set/unset plus their last 4 chars."""
        shown: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                raw = value.get_secret_value()
                value = f"****{raw[-4:]}" if len(raw) >= 12 else "****"
            elif isinstance(value, StrEnum):
                value = value.value
            elif isinstance(value, Path):
                value = str(value)
            shown[name] = value
        for name in _URL_FIELDS:
            value = getattr(self, name)
            shown[name] = mask_url_password(value) if value else None
        shown["effective_database_url"] = mask_url_password(self.effective_database_url)
        shown["effective_backend"] = self.effective_backend.value
        shown["effective_chat_model"] = self.effective_chat_model
        return shown


#: Settings that hold URLs, which may carry `user:password@` (masked in `masked()`).
_URL_FIELDS = ("database_url", "openai_base_url", "chat_base_url")
_SECRET_QUERY_KEY = re.compile(r"pass|secret|token|key|auth|sig", re.IGNORECASE)


def mask_url_password(url: str) -> str:
    """scheme://user:pw@host/… → scheme://user:***@host/…; URLs without a password unchanged.

    Works on any URL (SQLAlchemy's `postgresql+psycopg://…` and plain `http://…` alike) and
    never fails: text that does not parse as a URL with a password comes back as it was.
    Query parameters that name a secret (`?password=…`, `?api_key=…`, `?token=…`) are masked too.
    """
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url
    masked = url
    if password:
        userinfo, _, hostinfo = parts.netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        masked = masked.replace(parts.netloc, f"{user}:***@{hostinfo}", 1)
    if parts.query:
        pairs = [pair.partition("=") for pair in parts.query.split("&")]
        query = "&".join(
            f"{key}{eq}***" if eq and _SECRET_QUERY_KEY.search(key) else f"{key}{eq}{value}"
            for key, eq, value in pairs
        )
        # string surgery, not urlunsplit: that would turn sqlite:////abs/path into sqlite://abs/path
        head, _, tail = masked.partition("?")
        masked = f"{head}?{query}{tail[len(parts.query) :]}"
    return masked
