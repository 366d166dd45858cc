"""Settings: the documented environment names work, `auto` picks the backend people expect, and
a key never leaks into anything printed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from assistant.settings import (
    DEFAULT_OPENAI_CHAT_MODEL,
    DEFAULT_OPENAI_IMAGE_MODEL,
    BackendChoice,
    Settings,
    default_data_dir,
)

SENTINEL_KEY = "sk-test-SENTINEL-1234567890"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start from nothing: the developer's own ATELIER_* or OPENAI_API_KEY must not leak in."""
    for name in list(os.environ):
        if name.startswith("ATELIER_") or name.startswith("OPENAI_"):
            monkeypatch.delenv(name)


def test_defaults_run_offline_with_sqlite_in_the_data_dir() -> None:
    settings = Settings()
    assert settings.data_dir == default_data_dir()
    assert settings.effective_database_url == f"sqlite:///{default_data_dir() / 'atelier.db'}"
    assert settings.images_dir == default_data_dir() / "images"
    assert settings.backend is BackendChoice.AUTO
    assert settings.effective_backend is BackendChoice.OFFLINE
    assert settings.effective_chat_model is None
    assert settings.effective_chat_api_key is None
    assert settings.openai_image_model == DEFAULT_OPENAI_IMAGE_MODEL


def test_every_documented_env_name(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env = {
        "ATELIER_DATA_DIR": str(tmp_path / "data"),
        "ATELIER_DATABASE_URL": "postgresql://atelier@db.example/atelier",
        "ATELIER_BACKEND": "openai",
        "ATELIER_DIFFUSERS_MODEL": "/models/sd15",
        "ATELIER_OPENAI_BASE_URL": "http://127.0.0.1:9999/v1",
        "ATELIER_OPENAI_IMAGE_MODEL": "gpt-image-1-mini",
        "ATELIER_CHAT_BASE_URL": "http://127.0.0.1:11434/v1",
        "ATELIER_CHAT_MODEL": "llama3.2",
        "ATELIER_CHAT_API_KEY": "ollama-key-0000000000",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.data_dir == tmp_path / "data"
    assert settings.effective_database_url == "postgresql://atelier@db.example/atelier"
    assert settings.backend is BackendChoice.OPENAI
    assert settings.effective_backend is BackendChoice.OPENAI  # explicit choice beats auto rules
    assert settings.diffusers_model == "/models/sd15"
    assert settings.openai_base_url == "http://127.0.0.1:9999/v1"
    assert settings.openai_image_model == "gpt-image-1-mini"
    assert settings.chat_base_url == "http://127.0.0.1:11434/v1"
    assert settings.effective_chat_model == "llama3.2"
    assert settings.effective_chat_api_key is not None
    assert settings.effective_chat_api_key.get_secret_value() == "ollama-key-0000000000"


def test_data_dir_alone_moves_the_database(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ATELIER_DATA_DIR", str(tmp_path))
    assert Settings().effective_database_url == f"sqlite:///{tmp_path / 'atelier.db'}"


def test_chat_key_falls_back_to_openai_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SENTINEL_KEY)
    settings = Settings()
    assert settings.effective_chat_api_key is not None
    assert settings.effective_chat_api_key.get_secret_value() == SENTINEL_KEY
    assert settings.effective_chat_model == DEFAULT_OPENAI_CHAT_MODEL

    monkeypatch.setenv("ATELIER_CHAT_API_KEY", "chat-only-key-000000")
    settings = Settings()
    assert settings.effective_chat_api_key is not None
    assert settings.effective_chat_api_key.get_secret_value() == "chat-only-key-000000"


@pytest.mark.parametrize("base_url", ["https://api.openai.com/v1", "https://api.openai.com:443/v1/"])
def test_openai_key_serves_the_chat_agent_on_openai_itself(
    monkeypatch: pytest.MonkeyPatch, base_url: str
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SENTINEL_KEY)
    monkeypatch.setenv("ATELIER_CHAT_BASE_URL", base_url)
    settings = Settings()
    assert settings.chat_endpoint_is_openai
    assert settings.effective_chat_api_key is not None
    assert settings.effective_chat_api_key.get_secret_value() == SENTINEL_KEY
    assert settings.effective_chat_model == DEFAULT_OPENAI_CHAT_MODEL


@pytest.mark.parametrize(
    "base_url",
    [
        "http://127.0.0.1:11434/v1",  # Ollama
        "http://localhost:8000/v1",  # vLLM
        "https://llm.example.com/v1",
        "http://api.openai.com/v1",  # plain http: the key would cross the network in clear text
        "https://api.openai.com.evil.example/v1",
        "https://api.openai.com@evil.example/v1",  # userinfo trick: the host is evil.example
        "https://evil.example/api.openai.com/v1",
        "https://api.openai.com:8443/v1",
        "not a url",
    ],
)
def test_openai_key_never_goes_to_another_chat_server(monkeypatch: pytest.MonkeyPatch, base_url: str) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SENTINEL_KEY)
    monkeypatch.setenv("ATELIER_CHAT_BASE_URL", base_url)
    monkeypatch.setenv("ATELIER_CHAT_MODEL", "llama3.2")
    settings = Settings()
    assert not settings.chat_endpoint_is_openai
    assert settings.effective_chat_api_key is None
    assert settings.effective_chat_model == "llama3.2"  # the agent still runs, without a key
    assert settings.effective_backend is BackendChoice.OPENAI  # images still use the key, on OpenAI

    monkeypatch.setenv("ATELIER_CHAT_API_KEY", "own-server-key-000000")  # its own key is used
    settings = Settings()
    assert settings.effective_chat_api_key is not None
    assert settings.effective_chat_api_key.get_secret_value() == "own-server-key-000000"


def test_chat_endpoint_without_model_means_offline_planner(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SENTINEL_KEY)
    monkeypatch.setenv("ATELIER_CHAT_BASE_URL", "http://127.0.0.1:11434/v1")
    assert Settings().effective_chat_model is None  # don't send an OpenAI model name to Ollama


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, BackendChoice.OFFLINE),
        ({"OPENAI_API_KEY": SENTINEL_KEY}, BackendChoice.OPENAI),
        ({"ATELIER_DIFFUSERS_MODEL": "/models/sd15"}, BackendChoice.DIFFUSERS),
        (
            {"ATELIER_DIFFUSERS_MODEL": "/models/sd15", "OPENAI_API_KEY": SENTINEL_KEY},
            BackendChoice.DIFFUSERS,
        ),
        ({"ATELIER_BACKEND": "offline", "OPENAI_API_KEY": SENTINEL_KEY}, BackendChoice.OFFLINE),
        ({"OPENAI_API_KEY": "   "}, BackendChoice.OFFLINE),  # a blank key is no key
        ({"ATELIER_DIFFUSERS_MODEL": ""}, BackendChoice.OFFLINE),  # a blank model is no model
    ],
)
def test_auto_backend_resolution(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: BackendChoice
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert Settings().effective_backend is expected


def test_masked_output_never_contains_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SENTINEL_KEY)
    monkeypatch.setenv("ATELIER_CHAT_API_KEY", "chat-secret-ABCDEFGHIJ")
    monkeypatch.setenv("ATELIER_DATABASE_URL", "postgresql://atelier:db-pass-XYZ@db.example/atelier")
    settings = Settings()
    shown = settings.masked()
    dumped = json.dumps(shown, default=str)
    for secret in (SENTINEL_KEY, "chat-secret-ABCDEFGHIJ", "db-pass-XYZ", "SENTINEL"):
        assert secret not in dumped
        assert secret not in repr(settings) and secret not in str(settings)
    assert shown["openai_api_key"] == "****7890"
    assert shown["effective_backend"] == "openai"
    assert shown["database_url"].startswith("postgresql://atelier:***@")


def test_passwords_in_every_url_setting_are_masked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ATELIER_OPENAI_BASE_URL", "https://images:img-pass-XYZ@proxy.example/v1")
    monkeypatch.setenv(
        "ATELIER_CHAT_BASE_URL", "http://bob:chat-pass-XYZ@127.0.0.1:11434/v1?api_key=q-pass-XYZ"
    )
    monkeypatch.setenv("ATELIER_DATABASE_URL", "postgresql+psycopg://atelier:db-pass-XYZ@db.example/atelier")
    shown = Settings().masked()
    dumped = json.dumps(shown, default=str)
    assert "pass-XYZ" not in dumped
    assert shown["openai_base_url"] == "https://images:***@proxy.example/v1"
    assert shown["chat_base_url"] == "http://bob:***@127.0.0.1:11434/v1?api_key=***"
    assert shown["database_url"] == "postgresql+psycopg://atelier:***@db.example/atelier"
    assert shown["effective_database_url"] == shown["database_url"]

    # URLs without a password are shown exactly as given (an absolute SQLite path keeps its ////)
    monkeypatch.setenv("ATELIER_OPENAI_BASE_URL", "http://127.0.0.1:9999/v1")
    monkeypatch.delenv("ATELIER_DATABASE_URL")
    monkeypatch.setenv("ATELIER_DATA_DIR", str(tmp_path))
    shown = Settings().masked()
    assert shown["openai_base_url"] == "http://127.0.0.1:9999/v1"
    assert shown["effective_database_url"] == f"sqlite:///{tmp_path / 'atelier.db'}"


def test_short_keys_are_fully_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-short")
    assert Settings().masked()["openai_api_key"] == "****"


def test_invalid_values_are_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATELIER_BACKEND", "dall-e")
    with pytest.raises(ValidationError, match="backend"):
        Settings()


def test_openai_time_limits_reach_the_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    from assistant.backends import make_backend
    from tools.openai_images import OpenAIImagesBackend

    monkeypatch.setenv("ATELIER_BACKEND", "openai")
    monkeypatch.setenv("ATELIER_OPENAI_TIMEOUT", "20")
    monkeypatch.setenv("ATELIER_OPENAI_TOTAL_TIMEOUT", "45")
    monkeypatch.setenv("ATELIER_OPENAI_MAX_RETRIES", "5")
    backend = make_backend(Settings())
    assert isinstance(backend, OpenAIImagesBackend)
    assert (backend.timeout, backend.total_timeout, backend.max_retries) == (20.0, 45.0, 5)


def test_diffusers_compile_mode_reaches_the_backend_and_a_bad_one_is_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pytest.importorskip("diffusers")
    from assistant.backends import make_backend
    from tools.base import InvalidRequest

    monkeypatch.setenv("ATELIER_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("ATELIER_BACKEND", "diffusers")
    monkeypatch.setenv("ATELIER_DIFFUSERS_MODEL", "someone/some-model")  # a hub id: nothing loads yet
    monkeypatch.setenv("ATELIER_DIFFUSERS_COMPILE_MODE", "max-autotune")
    assert getattr(make_backend(Settings()), "compile_mode", None) == "max-autotune"
    monkeypatch.setenv("ATELIER_DIFFUSERS_COMPILE_MODE", "turbo")
    with pytest.raises(InvalidRequest, match="Unknown compile mode 'turbo'; use one of reduce-overhead"):
        make_backend(Settings())


def test_diffusers_fp8_reaches_the_backend_and_is_refused_on_a_cpu(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pytest.importorskip("diffusers")
    from assistant.backends import make_backend
    from tools.base import InvalidRequest

    monkeypatch.setenv("ATELIER_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("ATELIER_BACKEND", "diffusers")
    monkeypatch.setenv("ATELIER_DIFFUSERS_MODEL", "someone/some-model")
    monkeypatch.setenv("ATELIER_DIFFUSERS_DEVICE", "cpu")
    assert getattr(make_backend(Settings()), "fp8", None) is False
    monkeypatch.setenv("ATELIER_DIFFUSERS_FP8", "true")
    with pytest.raises(InvalidRequest, match="FP8 runs on NVIDIA GPUs only"):
        make_backend(Settings())


# ----- validation: one line naming the variable, its value and what is allowed ----------------


def _refusal(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    from assistant.settings import describe_settings_error

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as caught:
        Settings()
    return describe_settings_error(caught.value)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"ATELIER_BACKEND": "nonsense"},
            "ATELIER_BACKEND='nonsense' is not a backend; use auto, offline, openai or diffusers.",
        ),
        (
            {"ATELIER_STYLE": "nonexistentstyle"},
            "ATELIER_STYLE='nonexistentstyle' is not a style; use one of photographic, cinematic, "
            "anime, watercolor, oil painting,",  # … every preset in assistant.rewrite.STYLE_PRESETS
        ),
        (
            {"ATELIER_GUIDANCE": "nan"},
            "ATELIER_GUIDANCE='nan' is not a finite number; use a number from 0 to 50.",
        ),
        (
            {"ATELIER_GUIDANCE": "-inf"},
            "ATELIER_GUIDANCE='-inf' is not a finite number; use a number from 0 to 50.",
        ),
        (
            {"ATELIER_OPENAI_TIMEOUT": "inf"},
            "ATELIER_OPENAI_TIMEOUT='inf' is not a finite number; use a number above 0.",
        ),
        ({"ATELIER_CHAT_TIMEOUT": "0"}, "ATELIER_CHAT_TIMEOUT='0' is out of range; use a number above 0."),
        ({"ATELIER_COST_BUDGET_USD": "NaN"}, "ATELIER_COST_BUDGET_USD='NaN' is not a finite number"),
        (
            {"ATELIER_COST_BUDGET_USD": "-1"},
            "ATELIER_COST_BUDGET_USD='-1' is out of range; use a number of at least 0.",
        ),
        (
            {"ATELIER_SEED": "-2"},
            "ATELIER_SEED='-2' is out of range; use a whole number from 0 to 4294967295, "
            "or -1 for a new seed each time.",
        ),
        ({"ATELIER_MAX_N": "0"}, "ATELIER_MAX_N='0' is out of range; use a whole number of at least 1."),
        ({"ATELIER_STEPS": "ten"}, "ATELIER_STEPS='ten' is not a whole number."),
        (
            {"ATELIER_VERBATIM": "perhaps"},
            "ATELIER_VERBATIM='perhaps' is not true or false; use true, false, 1 or 0.",
        ),
    ],
)
def test_a_bad_value_is_named_with_what_is_allowed(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    described = _refusal(monkeypatch, **env)
    assert described.startswith(message), described
    assert "\n" not in described and "pydantic" not in described


def test_two_bad_values_are_both_named_on_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    described = _refusal(monkeypatch, ATELIER_BACKEND="x", ATELIER_SEED="y")
    assert "ATELIER_BACKEND='x'" in described and "ATELIER_SEED='y'" in described and "\n" not in described


@pytest.mark.parametrize(
    "url", ["garbage", "postgres//atelier:db-pass-XYZ@db.example/x", "://atelier:db-pass-XYZ@db.example"]
)
def test_a_database_url_that_does_not_parse_is_refused_without_echoing_it(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    described = _refusal(monkeypatch, ATELIER_DATABASE_URL=url)
    assert described.startswith("ATELIER_DATABASE_URL is not a database URL; use e.g. sqlite:///")
    assert "db-pass-XYZ" not in described and url not in described


def test_seed_minus_one_means_random_and_a_real_seed_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATELIER_SEED", "-1")
    assert Settings().seed is None  # as in AUTOMATIC1111: a new seed for every image
    monkeypatch.setenv("ATELIER_SEED", "4294967295")
    assert Settings().seed == 4294967295
    monkeypatch.setenv("ATELIER_SEED", "0")
    assert Settings().seed == 0


def test_a_style_alias_is_kept_as_its_preset(monkeypatch: pytest.MonkeyPatch) -> None:
    from assistant.rewrite import STYLE_PRESETS

    refused = _refusal(monkeypatch, ATELIER_STYLE="nonexistentstyle")
    assert all(name in refused for name in STYLE_PRESETS)
    monkeypatch.delenv("ATELIER_STYLE")
    monkeypatch.setenv("ATELIER_STYLE", "Oil_Painting")
    assert Settings().style == "oil painting"
    monkeypatch.setenv("ATELIER_STYLE", "manga")
    assert Settings().style == "anime"
    monkeypatch.setenv("ATELIER_STYLE", "")
    assert Settings().style is None


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"ATELIER_STEPS": "-3"}, "ATELIER_STEPS='-3' is out of range; use a whole number from 1 to 100"),
        ({"ATELIER_STEPS": "0"}, "from 1 to 100 (the most the offline renderer takes)"),
        ({"ATELIER_STEPS": "120"}, "ATELIER_STEPS='120' is out of range; use a whole number from 1 to 100"),
        ({"ATELIER_STEPS": "1000"}, "ATELIER_STEPS='1000' is out of range; use a whole number from 1 to 100"),
        (
            {"ATELIER_BACKEND": "diffusers", "ATELIER_MAX_STEPS": "500", "ATELIER_STEPS": "200"},
            "from 1 to 150 (the most the diffusers backend takes)",
        ),
        ({"ATELIER_BACKEND": "openai", "ATELIER_STEPS": "151"}, "from 1 to 150 (ATELIER_MAX_STEPS)"),
        ({"ATELIER_MAX_STEPS": "30", "ATELIER_STEPS": "31"}, "from 1 to 30 (ATELIER_MAX_STEPS)"),
        (
            {"ATELIER_HEIGHT": "4096"},
            "ATELIER_HEIGHT='4096' is out of range; use a whole number from 1 to 2048",
        ),
    ],
)
def test_defaults_over_the_limits_are_one_rule(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], problem: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    problems = Settings().limit_problems()
    assert len(problems) == 1 and problem in problems[0], problems


def test_defaults_within_the_limits_are_no_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().limit_problems() == []
    monkeypatch.setenv("ATELIER_STEPS", "100")
    monkeypatch.setenv("ATELIER_WIDTH", "2048")
    assert Settings().limit_problems() == []


def test_the_backends_step_limits_match_the_tools() -> None:
    from assistant.settings import BACKEND_MAX_STEPS
    from tools import offline

    assert BACKEND_MAX_STEPS["offline"][1] == offline.MAX_STEPS
    diffusers_local = pytest.importorskip("tools.diffusers_local")
    assert BACKEND_MAX_STEPS["diffusers"][1] == diffusers_local.MAX_STEPS


def test_data_dir_expands_home_and_blank_is_the_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("ATELIER_DATA_DIR", "~/pictures/atelier")
    assert Settings().data_dir == tmp_path / "pictures" / "atelier"
    monkeypatch.setenv("ATELIER_DATA_DIR", "")
    assert Settings().data_dir == default_data_dir()
    monkeypatch.setenv("ATELIER_DATA_DIR", "   ")
    assert Settings().data_dir == default_data_dir()
