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


def test_short_keys_are_fully_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-short")
    assert Settings().masked()["openai_api_key"] == "****"


def test_invalid_values_are_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATELIER_BACKEND", "dall-e")
    with pytest.raises(ValidationError, match="backend"):
        Settings()
