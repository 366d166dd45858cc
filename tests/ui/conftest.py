"""Fixtures for the UI suites: the real app file, a fresh data dir per test, the stored record.

Every test points Atelier at its own `tmp_path` through ATELIER_DATA_DIR (set before the app
first runs, since the app reads Settings once per session) and clears ATELIER_*/OPENAI_*
variables, so a developer's own key or local model never leaks into a run. What AppTest
cannot see (pixels, parent ids) is checked through a second `Repository` on the same files.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from streamlit.testing.v1 import AppTest

from storage.repository import Repository

ROOT = Path(__file__).resolve().parents[2]
APP_FILE = ROOT / "streamlit_app.py"
#: relative to the app file, as `AppTest.switch_page` wants it
HISTORY_PAGE = "assistant/ui/page_history.py"
CHAT_PAGE = "assistant/ui/page_chat.py"
#: one offline turn takes about a second; generous for a loaded CI machine
TIMEOUT = 30


def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("ATELIER_", "OPENAI_")):
            monkeypatch.delenv(name, raising=False)


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    clean_environment(monkeypatch)
    path = tmp_path / "data"
    monkeypatch.setenv("ATELIER_DATA_DIR", str(path))
    return path


def new_app() -> AppTest:
    """A fresh browser session on the app (its own session state), run once."""
    at = AppTest.from_file(str(APP_FILE), default_timeout=TIMEOUT)
    at.run()
    assert_ok(at)
    return at


@pytest.fixture
def app(data_dir: Path) -> AppTest:
    return new_app()


@pytest.fixture
def stored(data_dir: Path) -> Iterator[Repository]:
    """The database and files the app wrote, read independently of the app's cached repository."""
    data_dir.mkdir(parents=True, exist_ok=True)
    repository = Repository.open(f"sqlite:///{data_dir / 'atelier.db'}", data_dir / "images")
    yield repository
    repository.db.dispose()


def assert_ok(at: AppTest) -> None:
    """No exception element: a traceback on the page is always a failure."""
    assert not at.exception, [exc.value for exc in at.exception]


def send(at: AppTest, text: str) -> AppTest:
    at.chat_input[0].set_value(text).run()
    assert_ok(at)
    return at


def click(at: AppTest, key: str) -> AppTest:
    at.button(key=key).click().run()
    assert_ok(at)
    return at


def edit_box(at: AppTest) -> Any:
    """The edit box now open (each opening has a widget key of its own)."""
    from assistant.ui.support import Keys

    return at.text_input(key=at.session_state[Keys.EDIT_BOX])


def send_edit(at: AppTest) -> AppTest:
    at.button(key="FormSubmitter:atelier.edit_form-Send edit").click().run()
    assert_ok(at)
    return at


def unescape(markdown: str) -> str:
    """Undo `escape_markdown` so assertions read like what the user sees."""
    return re.sub(r"\\(.)", r"\1", markdown).replace("  \n", "\n")


def captions(at: AppTest) -> list[str]:
    return [caption.value for caption in at.caption]


def markdown_texts(at: AppTest) -> list[str]:
    return [unescape(element.value) for element in at.markdown]


def errors(at: AppTest) -> list[str]:
    return [unescape(element.value) for element in at.error]


class MediaFiles:
    """The files AppTest's runs handed to the browser: images and (on a click) downloads.

    AppTest shows an image as a URL; each run stores the bytes behind it in a fresh in-memory
    media manager, which this records so a test can read what the browser would receive.
    """

    def __init__(self) -> None:
        self.managers: list[Any] = []

    def _file(self, url: str) -> bytes:
        file_id = url.rsplit("/", 1)[-1].split(".", 1)[0]
        for manager in reversed(self.managers):
            try:
                return bytes(manager._storage.get_file(file_id).content)
            except Exception:  # MediaFileStorageError: not in this run's storage
                continue
        raise AssertionError(f"no media file behind {url}")

    def image(self, element: Any) -> bytes:
        """The bytes of an `st.image` element (its only picture)."""
        (url,) = element.value
        return self._file(url)

    def download(self, button: Any) -> bytes:
        """What clicking a download button gives, as the browser's request for it would."""
        file_id = button.proto.deferred_file_id
        if not file_id:
            return self._file(button.proto.url)
        for manager in reversed(self.managers):
            if file_id in manager._deferred_callables:
                return self._file(manager.execute_deferred(file_id))
        raise AssertionError(f"no deferred download {file_id}")


@pytest.fixture
def media(monkeypatch: pytest.MonkeyPatch) -> MediaFiles:
    from streamlit.runtime.media_file_manager import MediaFileManager
    from streamlit.testing.v1 import app_test

    files = MediaFiles()

    class RecordingMediaFileManager(MediaFileManager):
        def __init__(self, storage: Any) -> None:
            super().__init__(storage)
            files.managers.append(self)

    monkeypatch.setattr(app_test, "MediaFileManager", RecordingMediaFileManager)
    return files
