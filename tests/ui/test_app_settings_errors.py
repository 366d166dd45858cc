"""A bad setting stops the page with one line that names it, and never shows a secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.ui.conftest import errors, new_app


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        (
            "ATELIER_BACKEND",
            "nonsense",
            "ATELIER_BACKEND='nonsense' is not a backend; use auto, offline, openai or diffusers.",
        ),
        ("ATELIER_DATABASE_URL", "postgresql://u:s3cretpw@host:notaport/db", "ATELIER_DATABASE_URL is not"),
        ("ATELIER_STEPS", "500", "ATELIER_STEPS='500' is out of range; use a whole number from 1 to 100"),
    ],
)
def test_a_bad_setting_is_named_on_the_page_and_nothing_is_stored(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(name, value)
    app = new_app()
    (shown,) = errors(app)
    assert shown.startswith("Atelier's settings are invalid: ") and expected in shown, shown
    assert "s3cretpw" not in shown and "input_value" not in shown
    assert not (data_dir / "atelier.db").exists()
