"""The app holds at most one local diffusers model: switching models frees the previous one.

Light backends (offline, OpenAI clients) are cached per configuration; a diffusers model takes
gigabytes, so the server keeps one. The first test uses stand-in backends to check the rule at
the cache; the second loads two tiny random-weight pipelines through the real adapter and
checks that the first one's weights are really gone once the user switches.
"""

from __future__ import annotations

import dataclasses
import gc
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from streamlit.testing.v1 import AppTest

from assistant.ui import common
from assistant.ui.support import Keys
from storage.repository import Repository
from tests.ui.conftest import assert_ok, captions, errors, new_app, send

FOX = "a red fox in the snow at night"


class StandIn:
    """A diffusers-sized backend in name only: the offline renderer under a model's name."""

    def __init__(self, model: str) -> None:
        from tools.offline import OfflineBackend

        self.inner = OfflineBackend()
        self.name, self.model, self.capabilities = "diffusers", model, self.inner.capabilities

    def estimate_cost(self, request: Any) -> float | None:
        return 0.0

    def run(self, request: Any, progress: Any = None, cancel: Any = None) -> Any:
        result = self.inner.run(request, progress, cancel)
        return dataclasses.replace(result, backend=self.name, model=self.model)


@pytest.fixture
def fresh_backends() -> Iterator[None]:
    common.clear_backends()
    yield
    common.clear_backends()  # later tests build their own


def test_switching_the_local_model_lets_go_of_the_previous_one(
    data_dir: Path, stored: Repository, monkeypatch: pytest.MonkeyPatch, fresh_backends: None
) -> None:
    import assistant.backends
    from assistant.backends import make_backend

    built: list[str] = []
    alive: dict[str, weakref.ref[StandIn]] = {}

    def making(settings: Any, choice: Any = None) -> Any:
        if settings.effective_backend.value != "diffusers":
            return make_backend(settings, choice)
        backend = StandIn(settings.diffusers_model)
        built.append(backend.model)
        alive[backend.model] = weakref.ref(backend)
        return backend

    monkeypatch.setattr(assistant.backends, "make_backend", making)
    monkeypatch.setenv("ATELIER_BACKEND", "diffusers")
    monkeypatch.setenv("ATELIER_DIFFUSERS_MODEL", "/models/a")
    app = new_app()

    def held() -> list[str]:
        gc.collect()
        return sorted(model for model, ref in alive.items() if ref() is not None)

    send(app, FOX)
    send(app, "make it darker")
    assert built == ["/models/a"] and held() == ["/models/a"]  # built once, reused

    app.text_input(key=Keys.DIFFUSERS_MODEL).set_value("/models/b").run()
    send(app, FOX)
    assert built == ["/models/a", "/models/b"]
    assert held() == ["/models/b"]  # a is gone, not merely pushed down a cache

    # a light backend in between does not cost the loaded model
    app.selectbox(key=Keys.BACKEND).set_value("offline").run()
    send(app, FOX)
    app.selectbox(key=Keys.BACKEND).set_value("diffusers").run()
    assert app.text_input(key=Keys.DIFFUSERS_MODEL).value == "/models/b"
    send(app, FOX)
    assert built == ["/models/a", "/models/b"] and held() == ["/models/b"]

    # a second session on another model takes the slot over; the first gets it back on its turn
    other = new_app()
    send(other, FOX)
    assert built[-1] == "/models/a" and held() == ["/models/a"]
    send(app, "make it brighter")
    assert built[-1] == "/models/b" and held() == ["/models/b"]
    models = [image.model if image.backend == "diffusers" else "-" for image in stored.list_images()[::-1]]
    assert models == ["/models/a"] * 2 + ["/models/b", "-", "/models/b", "/models/a", "/models/b"]
    assert not errors(app) and not errors(other)


@pytest.mark.slow
def test_a_real_local_model_is_freed_when_the_user_switches(
    data_dir: Path,
    stored: Repository,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fresh_backends: None,
) -> None:
    """Two tiny random-weight pipelines through the real adapter; the sidebar's settings reach them."""
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    from tests.tools.tiny_pipeline import save_tiny_sd
    from tools import diffusers_local

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    first = save_tiny_sd(tmp_path / "models" / "tiny-a")
    second = save_tiny_sd(tmp_path / "models" / "tiny-b")
    diffusers_local.clear_cache()
    monkeypatch.setenv("ATELIER_BACKEND", "diffusers")
    monkeypatch.setenv("ATELIER_DIFFUSERS_MODEL", str(first))
    app: AppTest = new_app()
    app.selectbox(key=Keys.SIZE).set_value("512x512")
    app.slider(key=Keys.STEPS).set_value(2)
    app.slider(key=Keys.GUIDANCE).set_value(3.5)
    app.radio(key=Keys.SEED_MODE).set_value("Fixed").run()
    app.number_input(key=Keys.SEED).set_value(7)
    send(app, FOX)
    assert "#1 · generate" in captions(app), errors(app)

    (image,) = stored.list_images()
    assert (image.backend, image.width, image.height, image.seed) == ("diffusers", 512, 512, 7)
    assert (image.params["steps"], image.params["guidance"]) == (2, 3.5)  # what the pipeline ran with
    assert [key.model for key in diffusers_local.cache_info().models] == [str(first)]
    loads = diffusers_local.cache_info().loads
    # the pipeline the app loaded (same load key, so this finds it rather than loading again)
    weights = weakref.ref(diffusers_local.DiffusersBackend(str(first)).load().base)
    assert diffusers_local.cache_info().loads == loads

    app.text_input(key=Keys.DIFFUSERS_MODEL).set_value(str(second)).run()
    assert_ok(app)
    send(app, "make it darker")
    assert "#2 · edit · from #1" in captions(app), errors(app)
    assert [key.model for key in diffusers_local.cache_info().models] == [str(second)]
    gc.collect()
    assert weights() is None, "the first model's pipeline is still in memory"
    edited = stored.list_images()[0]
    assert edited.params["steps"] == 2 and edited.parent_id == image.id
    diffusers_local.clear_cache()
