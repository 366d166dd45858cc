"""The UI's non-rendering helpers, without Streamlit: the banner, the steps limit, the URL id."""

from __future__ import annotations

from pathlib import Path

import pytest

from assistant.backends import backend_banner
from assistant.settings import BackendChoice, Settings
from assistant.ui import support
from tests.ui.conftest import clean_environment


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    clean_environment(monkeypatch)
    return Settings(data_dir=tmp_path)


def test_the_diffusers_banner_says_how_to_set_a_missing_model(settings: Settings) -> None:
    unset = backend_banner(settings.model_copy(update={"backend": BackendChoice.DIFFUSERS}))
    assert "None" not in unset
    assert "no model set: set ATELIER_DIFFUSERS_MODEL=/path/to/model" in unset
    assert unset.endswith("planning: the offline planner (rules, no LLM).")

    configured = settings.model_copy(
        update={"backend": BackendChoice.DIFFUSERS, "diffusers_model": "/models/sd15"}
    )
    assert backend_banner(configured).startswith("Images: local diffusers model /models/sd15;")


def test_the_steps_limit_never_offers_a_value_the_backend_refuses(settings: Settings) -> None:
    from tools.offline import MAX_STEPS

    assert support.OFFLINE_MAX_STEPS == MAX_STEPS  # the UI's copy of the offline renderer's limit
    assert support.steps_limit(settings, "offline") == MAX_STEPS
    assert support.steps_limit(settings, "diffusers") == min(settings.max_steps, 150)
    strict = settings.model_copy(update={"max_steps": 30})
    assert support.steps_limit(strict, "offline") == 30  # ATELIER_MAX_STEPS is a limit too
    assert support.steps_limit(strict, "openai") == 30


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("12", 12),
        (" 7 ", 7),
        ("0", None),
        ("-3", None),
        ("abc", None),
        ("1e3", None),
        ("²", None),
        ("", None),
    ],
)
def test_the_conversation_in_the_url_is_a_positive_integer(raw: str, expected: int | None) -> None:
    assert support.parse_conversation_param(raw) == expected
