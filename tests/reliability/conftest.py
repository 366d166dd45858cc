"""Fixtures shared by the reliability suites: the loopback fake OpenAI server and a tiny model."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fake_openai import FakeOpenAI


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    """A real HTTP server on 127.0.0.1 speaking the OpenAI wire format, with a request log."""
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture(scope="session")
def tiny_model_master(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The tiny random-weight SD pipeline saved once; tests copy it (some delete their copy)."""
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    from tests.tools.tiny_pipeline import save_tiny_sd

    yield save_tiny_sd(tmp_path_factory.mktemp("models") / "tiny-sd")  # built in code, no download


@pytest.fixture
def tiny_model(tiny_model_master: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """This test's own copy of the model folder (so a test may remove it), hub switched off."""
    from tools import diffusers_local

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = shutil.copytree(tiny_model_master, tmp_path / "model")
    yield folder
    diffusers_local.clear_cache()  # give the memory back; the next test loads its own copy
