"""Atelier's settings: one pydantic-settings class, read once and passed down.

Every name is `ATELIER_<FIELD>` in the environment (outside scripts rely on them), except
`OPENAI_API_KEY`, which is read under its usual name so an existing OpenAI setup just works.
Modules never read `os.environ` themselves; they receive a `Settings`.
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import Any, get_args
from urllib.parse import urlsplit

import annotated_types
import platformdirs
from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from assistant.rewrite import STYLE_PRESETS, normalize_style


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

#: the largest seed every backend takes (torch.Generator and the offline renderer: 32 bits)
MAX_SEED = 2**32 - 1
#: a seed of -1 means "draw a new one each time", as in AUTOMATIC1111
RANDOM_SEED = -1
#: the backends' own step limits (`tools.offline.MAX_STEPS`, `tools.diffusers_local.MAX_STEPS`),
#: repeated so that reading settings imports no tool; a test checks they agree
BACKEND_MAX_STEPS = {"offline": ("the offline renderer", 100), "diffusers": ("the diffusers backend", 150)}
#: the smallest side any backend draws (`tools.offline.MIN_SIDE`); smaller is refused before a call
MIN_SIDE = 64
#: the largest CFG scale accepted (AUTOMATIC1111's slider stops at 30; some models like more)
MAX_GUIDANCE = 50


class SettingError(ValueError):
    """One bad setting, raised by a validator: the field and what is wrong with its value."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason


class Settings(BaseSettings):
    # allow_inf_nan=False: ATELIER_GUIDANCE=nan would otherwise reach the backends and the JSON
    model_config = SettingsConfigDict(
        env_prefix="ATELIER_", extra="ignore", populate_by_name=True, allow_inf_nan=False
    )

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
    openai_timeout: float = Field(default=120.0, gt=0)
    openai_max_retries: int = Field(default=2, ge=0)
    openai_total_timeout: float = Field(default=300.0, gt=0)

    chat_base_url: str | None = None
    chat_model: str | None = None
    chat_api_key: SecretStr | None = None
    chat_on_failure: ChatFailureMode = ChatFailureMode.FALLBACK
    chat_max_tool_calls: int = Field(default=6, ge=0)
    chat_timeout: float = Field(default=60.0, gt=0)
    chat_history_tokens: int = Field(default=2000, ge=0)

    #: None: the backend's natural size (512² offline, 1024² on OpenAI, the model's own on diffusers)
    width: int | None = Field(default=None, ge=MIN_SIDE)
    height: int | None = Field(default=None, ge=MIN_SIDE)
    #: 1 to the backend's most and ATELIER_MAX_STEPS (see `limit_problems`)
    steps: int = 25
    guidance: float = Field(default=7.0, ge=0, le=MAX_GUIDANCE)
    #: a style preset's name or alias (`assistant.rewrite.STYLE_PRESETS`), kept as the preset's name
    style: str | None = None
    verbatim: bool = False
    #: None (or -1 in the environment): a new seed for every image
    seed: int | None = Field(default=None, ge=RANDOM_SEED, le=MAX_SEED)

    max_n: int = Field(default=4, ge=1)
    max_side: int = Field(default=2048, ge=1)
    max_steps: int = Field(default=150, ge=1)
    max_pixels_per_turn: int = Field(default=4096 * 4096, ge=1)
    #: Optional spending cap per conversation for paid backends, in US dollars.
    cost_budget_usd: float | None = Field(default=None, ge=0)
    max_message_chars: int = Field(default=20_000, ge=1)

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

    @field_validator("data_dir", mode="before")
    @classmethod
    def _data_dir_from_env(cls, value: Any) -> Any:
        """`~/x` is the user's home, as in a shell; an empty ATELIER_DATA_DIR= means the default."""
        if isinstance(value, str) and not value.strip():
            return default_data_dir()
        if isinstance(value, str | Path):
            return Path(value).expanduser()
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url_parses(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return value
        try:
            make_url(value.strip())
        except (ArgumentError, ValueError):  # never shown: it may hold a password (":port" is int())
            raise SettingError(
                "database_url",
                "is not a database URL; use e.g. sqlite:////path/to/atelier.db or "
                "postgresql+psycopg://user@host/dbname",
            ) from None
        return value.strip()

    @field_validator("style")
    @classmethod
    def _style_is_a_preset(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        name = normalize_style(value)
        if name is None:
            raise SettingError("style", f"is not a style; use one of {_choices(list(STYLE_PRESETS))}")
        return name

    @field_validator("seed")
    @classmethod
    def _minus_one_is_random(cls, value: int | None) -> int | None:
        return None if value == RANDOM_SEED else value

    def limit_problems(self) -> list[str]:
        """Defaults the limits would refuse, one message each ("ATELIER_STEPS=120 is out of range; …").

        Not a validator: code may build settings beyond the limits on purpose (to test the
        refusals), but a command checks these at start, so that a bad default is refused before
        anything is stored rather than by the first turn, after its conversation exists.
        """
        problems: list[str] = []
        most, why = self.max_steps, "ATELIER_MAX_STEPS"
        backend = BACKEND_MAX_STEPS.get(self.effective_backend.value)
        if backend is not None and backend[1] < most:
            most, why = backend[1], f"the most {backend[0]} takes"
        if not 1 <= self.steps <= most:
            problems.append(
                f"ATELIER_STEPS={str(self.steps)!r} is out of range; "
                f"use a whole number from 1 to {most} ({why})."
            )
        for name in ("width", "height"):
            side = getattr(self, name)
            if side is not None and side > self.max_side:
                problems.append(
                    f"{env_name(name)}={str(side)!r} is out of range; "
                    f"use a whole number from 1 to {self.max_side} (ATELIER_MAX_SIDE)."
                )
        return problems

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
#: Settings whose value is never repeated in a message (keys, and URLs that may hold a password).
_SECRET_FIELDS = ("openai_api_key", "chat_api_key", *_URL_FIELDS)
#: What an enum setting's value must be, for "ATELIER_BACKEND='x' is not a backend; …"
_ENUM_NOUNS = {"backend": "a backend", "chat_on_failure": "a chat failure mode"}
#: Ranges said better by hand than from the field's bounds
_RANGE_TEXT = {"seed": f"a whole number from 0 to {MAX_SEED}, or {RANDOM_SEED} for a new seed each time"}


def env_name(field: str) -> str:
    """The environment variable a field is read from."""
    return "OPENAI_API_KEY" if field == "openai_api_key" else f"ATELIER_{field.upper()}"


def describe_settings_error(exc: ValidationError) -> str:
    """One line naming each bad setting, its value (never a secret's) and what is allowed.

    "ATELIER_BACKEND='nonsense' is not a backend; use auto, offline, openai or diffusers."
    """
    return " ".join(_describe_one(error) for error in exc.errors())


def _describe_one(error: Any) -> str:
    ctx = error.get("ctx") or {}
    raised = ctx.get("error")
    loc = error.get("loc") or ()
    if isinstance(raised, SettingError):
        field = raised.field
    else:
        field = str(loc[0]) if loc else ""
        field = "openai_api_key" if field == "OPENAI_API_KEY" else field
    info = Settings.model_fields.get(field)
    if info is None:  # not a field: the best we can say without a name
        return f"Invalid settings: {error.get('msg', 'invalid value')}."
    name = env_name(field)
    value = error.get("input")
    shown = name if field in _SECRET_FIELDS else f"{name}={str(value)!r}"
    if isinstance(raised, SettingError):
        return f"{shown} {raised.reason}."
    kind = error.get("type", "")
    types = {info.annotation, *get_args(info.annotation)}
    number = "a whole number" if int in types else "a number"
    if kind == "enum":
        enum = next((t for t in types if isinstance(t, type) and issubclass(t, StrEnum)), None)
        options = [member.value for member in enum] if enum else [str(ctx.get("expected", ""))]
        noun = _ENUM_NOUNS.get(field, "one of the choices")
        return f"{shown} is not {noun}; use {_choices(options, 'or')}."
    if kind == "bool_parsing":
        return f"{shown} is not true or false; use true, false, 1 or 0."
    allowed = _range_text(field, info, number)
    hint = f"; use {allowed}" if allowed != number else ""
    if kind in ("int_parsing", "int_from_float", "int_type"):
        return f"{shown} is not a whole number{hint}."
    if kind in ("float_parsing", "float_type"):
        return f"{shown} is not a number{hint}."
    if kind == "finite_number":
        return f"{shown} is not a finite number{hint}."
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return f"{shown} is out of range; use {allowed}."
    message = str(error.get("msg") or "invalid value").rstrip(".")
    return f"{shown} is not valid ({message[0].lower()}{message[1:]})."


def _range_text(field: str, info: Any, number: str) -> str:
    if field in _RANGE_TEXT:
        return _RANGE_TEXT[field]
    low: Any = None
    high: Any = None
    above = False
    for bound in info.metadata:
        if isinstance(bound, annotated_types.Ge):
            low = bound.ge
        elif isinstance(bound, annotated_types.Gt):
            low, above = bound.gt, True
        elif isinstance(bound, annotated_types.Le):
            high = bound.le
    if low is not None and high is not None:
        return f"{number} from {low:g} to {high:g}"
    if low is not None:
        return f"{number} above {low:g}" if above else f"{number} of at least {low:g}"
    return number


def _choices(options: list[str], last: str = "or") -> str:
    return options[0] if len(options) == 1 else f"{', '.join(options[:-1])} {last} {options[-1]}"


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
