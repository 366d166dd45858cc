"""End to end in a real browser: `atelier ui` as a subprocess, driven by Playwright + Chromium.

Uses Debian's Chromium at /usr/bin/chromium (never `playwright install`, which downloads a
browser); the test is skipped only when that binary is missing. The server gets its own
data dir and a free port, is polled on Streamlit's health endpoint until it answers, and is
always stopped (its whole process group: `atelier ui` starts `streamlit run` as a child).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image as PILImage

from storage.repository import Repository

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
STARTUP_TIMEOUT_S = 60
TURN_TIMEOUT_MS = 60_000

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="Debian's Chromium is not installed at /usr/bin/chromium (CI runs `apt-get install chromium`)",
    ),
]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_healthy(base_url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    """Poll /_stcore/health: the port can accept connections before the app is ready."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"`atelier ui` exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            with urllib.request.urlopen(f"{base_url}/_stcore/health", timeout=2) as response:
                if response.status == 200 and response.read().strip() == b"ok":
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.25)
    pytest.fail(f"`atelier ui` did not become healthy in {STARTUP_TIMEOUT_S} s:\n{log_path.read_text()}")


def stop(process: subprocess.Popen[bytes]) -> None:
    """End the server's process group (ours alone: it was started in a new session)."""
    if process.poll() is not None:
        return
    for sig, wait_s in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def server(tmp_path: Path, data_dir: Path) -> Iterator[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ATELIER_", "OPENAI_"))}
    env["ATELIER_DATA_DIR"] = str(data_dir)
    env["STREAMLIT_BROWSER_GATHER_USAGE_STATS"] = "false"
    atelier = shutil.which("atelier", path=str(Path(sys.executable).parent))
    command = [atelier] if atelier else [sys.executable, "-m", "assistant.cli"]
    port = free_port()
    command += ["ui", "--headless", "--port", str(port), "--address", "127.0.0.1"]
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        base_url = f"http://127.0.0.1:{port}"
        wait_until_healthy(base_url, process, log_path)
        yield base_url
    finally:
        stop(process)


def test_type_a_request_see_the_image_then_its_lineage(server: str, tmp_path: Path, data_dir: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(server)
            chat_box = page.locator('[data-testid="stChatInputTextArea"]')
            chat_box.wait_for(timeout=30_000)
            sync_api.expect(
                page.get_by_text("built-in offline sketch renderer", exact=False).first
            ).to_be_visible()

            chat_box.fill("a red fox in the snow at night")
            chat_box.press("Enter")
            image = page.locator('[data-testid="stChatMessage"] img').first
            image.wait_for(timeout=TURN_TIMEOUT_MS)
            sync_api.expect(page.get_by_text("#1 · generate")).to_be_visible(timeout=TURN_TIMEOUT_MS)
            page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
            page.screenshot(path=str(shots / "chat.png"))
            with page.expect_download() as download:
                page.get_by_role("button", name="PNG").first.click()
            png_path = tmp_path / "download.png"
            download.value.save_as(png_path)

            page.get_by_role("link", name="History").click()
            page.get_by_role("button", name="Details").first.click()
            graph = page.locator('[data-testid="stGraphVizChart"] svg')
            graph.wait_for(timeout=30_000)
            sync_api.expect(graph).to_contain_text("#1 generate")
            graph.scroll_into_view_if_needed()
            page.screenshot(path=str(shots / "history.png"), full_page=True)
        finally:
            browser.close()

    assert (shots / "chat.png").stat().st_size > 10_000
    assert (shots / "history.png").stat().st_size > 10_000
    with PILImage.open(png_path) as png:  # the stored PNG, with its parameters in its metadata
        assert png.size == (512, 512) and "a red fox" in png.info.get("parameters", "")
    repo = Repository.open(f"sqlite:///{data_dir / 'atelier.db'}", data_dir / "images")
    try:
        (image_row,) = repo.list_images()
        assert (image_row.number, image_row.instruction) == (1, "a red fox in the snow at night")
        assert repo.image_path(image_row).is_file()
    finally:
        repo.db.dispose()
