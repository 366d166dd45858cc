"""End to end in a real browser: `atelier ui` as a subprocess, driven by Playwright + Chromium.

Uses Debian's Chromium at /usr/bin/chromium (never `playwright install`, which downloads a
browser). Without that binary (or Playwright) the test is skipped on a developer machine and
fails under CI (the `CI` environment variable set), so CI can never pass by skipping it. The
server draws big images in many steps, slow enough to watch a turn while it runs. It gets its own
data dir and a free port, is polled on Streamlit's health endpoint until it answers, and is
always stopped (its whole process group: `atelier ui` starts `streamlit run` as a child).
"""

from __future__ import annotations

import contextlib
import os
import re
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
from typing import Any

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

#: enough work per turn (the offline renderer reports each step) to watch it in the browser
TURN_ENVIRONMENT = {"ATELIER_STEPS": "100", "ATELIER_WIDTH": "1536", "ATELIER_HEIGHT": "1024"}

pytestmark = [pytest.mark.slow]


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def skip_or_fail(reason: str) -> None:
    """Locally a missing browser skips the test; in CI it is a failure, not a silent pass."""
    if in_ci():
        pytest.fail(f"{reason} (CI is set, so this browser test must run)")
    pytest.skip(reason)


@pytest.fixture
def sync_api() -> Any:
    """Playwright's sync API, once Debian's Chromium and Playwright are both there."""
    if not CHROMIUM.exists():
        skip_or_fail(
            "Debian's Chromium is not installed at /usr/bin/chromium (CI runs `apt-get install chromium`)"
        )
    try:
        from playwright import sync_api
    except ImportError:
        skip_or_fail("Playwright is not installed (pip install -e '.[test]')")
    return sync_api


#: Records, on every DOM change, what the open status box of a running turn shows; so the
#: test sees the turn while it runs however quickly it ends.
WATCH_STATUS_JS = """
() => {
  window.__atelierSeen = [];
  const look = () => {
    const boxes = document.querySelectorAll('[data-testid="stChatMessage"] [data-testid="stExpander"]');
    for (const box of boxes) {
      const details = box.querySelector('[data-testid="stExpanderDetails"]');
      if (!details || details.hasAttribute("inert") || details.getBoundingClientRect().height <= 0) continue;
      const text = details.innerText;
      const step = (text.match(/Step \\d+ of \\d+/) || [null])[0];
      const seen = {
        step: step,
        prompt: text.includes("Prompt:"),
        running: box.querySelector('[data-testid="stExpanderIconSpinner"]') !== null,
      };
      const last = window.__atelierSeen[window.__atelierSeen.length - 1];
      if (!last || JSON.stringify(last) !== JSON.stringify(seen)) window.__atelierSeen.push(seen);
    }
  };
  new MutationObserver(look).observe(document.body, {
    subtree: true, childList: true, characterData: true, attributes: true,
  });
}
"""


SCRIPT_RUNNING = "() => !!document.querySelector('[data-test-script-state=\"running\"]')"


def wait_until_idle(page: Any, sync_api: Any | None = None) -> None:
    """Until the page's script run is over: a click during a rerun can land on a replaced button.

    With `sync_api`, first wait (briefly) for the rerun a click has asked for to start: it
    begins a moment after the click, and the page looks idle until then.
    """
    if sync_api is not None:
        with contextlib.suppress(sync_api.TimeoutError):
            page.wait_for_function(SCRIPT_RUNNING, timeout=2_000)
    page.wait_for_function(f"() => !({SCRIPT_RUNNING})()")


def download_png(sync_api: Any, page: Any, target: Path) -> None:
    """Click "PNG" in the open "More" popover and save the file.

    Opening the popover reruns the page (its open state is tracked, so an action can close
    it); on a loaded machine a click can land on the button that rerun is replacing, and no
    download starts (or the popover does not open). The click is then made again.
    """
    for _ in range(3):
        wait_until_idle(page, sync_api)
        if not page.get_by_role("button", name="PNG").first.is_visible():  # the open was lost too
            page.get_by_role("button", name="More").first.click()
            wait_until_idle(page, sync_api)
        try:
            with page.expect_download(timeout=15_000) as download:
                page.get_by_role("button", name="PNG").first.click()
        except sync_api.TimeoutError:
            continue
        download.value.save_as(target)
        return
    pytest.fail("clicking PNG three times started no download")


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


@contextlib.contextmanager
def stored_repository(data_dir: Path) -> Iterator[Repository]:
    """The server's database and files, opened independently of it, to check what was stored."""
    repo = Repository.open(f"sqlite:///{data_dir / 'atelier.db'}", data_dir / "images")
    try:
        yield repo
    finally:
        repo.db.dispose()


@contextlib.contextmanager
def serving(tmp_path: Path, data_dir: Path, environment: dict[str, str]) -> Iterator[str]:
    """`atelier ui` on a free port with its own data dir; yields its base URL, then stops it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ATELIER_", "OPENAI_"))}
    env["ATELIER_DATA_DIR"] = str(data_dir)
    env["STREAMLIT_BROWSER_GATHER_USAGE_STATS"] = "false"
    env.update(environment)
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


@pytest.fixture
def server(tmp_path: Path, data_dir: Path) -> Iterator[str]:
    """A server whose turns are slow enough to watch (big images, many steps)."""
    with serving(tmp_path, data_dir, TURN_ENVIRONMENT) as base_url:
        yield base_url


@pytest.fixture
def quick_server(tmp_path: Path, data_dir: Path) -> Iterator[str]:
    """A server on the defaults (small images, quick turns)."""
    with serving(tmp_path, data_dir, {}) as base_url:
        yield base_url


def test_type_a_request_see_the_image_then_its_lineage(
    sync_api: Any, server: str, tmp_path: Path, data_dir: Path
) -> None:
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
            # `atelier ui` is an app, not a script being written: no Deploy button
            sync_api.expect(page.get_by_role("button", name="Deploy")).to_have_count(0)

            page.evaluate(WATCH_STATUS_JS)
            chat_box.fill("a red fox in the snow at night")
            chat_box.press("Enter")
            image = page.locator('[data-testid="stChatMessage"] img').first
            image.wait_for(timeout=TURN_TIMEOUT_MS)
            sync_api.expect(page.get_by_text("#1 · generate")).to_be_visible(timeout=TURN_TIMEOUT_MS)
            seen: list[dict[str, Any]] = page.evaluate("window.__atelierSeen")
            # while it ran, the status box was open, running, with the rewritten prompt and the steps
            assert any(s["prompt"] and s["running"] for s in seen), seen
            steps = [s["step"] for s in seen if s["step"] and s["running"]]
            assert steps, f"no step was visible in an open, running status box: {seen}"
            assert all(step.endswith(" of 100") for step in steps), steps
            page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
            # the chat draws a thumbnail of the 1536×1024 image; the download below is full size
            assert image.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [384, 256]
            # a screen reader hears the picture's request, not "image" or nothing
            assert (image.get_attribute("alt") or "").startswith(
                "Image #1, generate: a red fox in the snow at night,"
            )
            page.screenshot(path=str(shots / "chat.png"))
            # the picture says how to make it again, and the rarer actions wait under "More"
            settings_line = re.compile(r"^seed \d+ · 1536×1024 · 100 steps$")
            sync_api.expect(page.get_by_text(settings_line)).to_have_count(1)
            page.get_by_role("button", name="More").first.click()
            png_path = tmp_path / "download.png"
            download_png(sync_api, page, png_path)
            # an action chosen in "More" closes it: it is not left floating over the chat
            use_as_init = page.get_by_role("button", name="Use as init").first
            sync_api.expect(use_as_init).to_be_visible()  # the download left "More" open
            # and the pointer still on "PNG" shows its tooltip, which must not cover another action
            page.mouse.move(0, 0)  # off and back on, so the tooltip opens now, before the click
            page.get_by_role("button", name="PNG").first.hover()
            sync_api.expect(page.get_by_text("The stored PNG, with its generation")).to_be_visible()
            use_as_init.click()
            sync_api.expect(
                page.get_by_text("#1 is attached to your next message", exact=False)
            ).to_be_visible()
            sync_api.expect(use_as_init).to_be_hidden()
            page.get_by_role("button", name="Don't attach it").click()

            chat_box.fill("make it darker")
            chat_box.press("Enter")
            sync_api.expect(page.get_by_text("#2 · edit · from #1")).to_be_visible(timeout=TURN_TIMEOUT_MS)
            page.screenshot(path=str(shots / "chat-edit.png"))

            page.get_by_role("link", name="History").click()
            page.get_by_role("button", name="Details").first.click()  # newest first: #2
            graph = page.locator('[data-testid="stGraphVizChart"] svg')
            graph.wait_for(timeout=30_000)
            detail = page.get_by_role("img", name=re.compile(r"^Image #2, edit: a red fox in the snow")).first
            sync_api.expect(detail).to_be_visible()
            sync_api.expect(graph).to_contain_text("#1 generate")
            sync_api.expect(graph).to_contain_text("#2 edit")
            sync_api.expect(graph.locator("g.node")).to_have_count(2)
            sync_api.expect(graph.locator("g.edge")).to_have_count(1)
            graph.scroll_into_view_if_needed()
            page.screenshot(path=str(shots / "history.png"), full_page=True)
        finally:
            browser.close()

    for shot in ("chat.png", "chat-edit.png", "history.png"):
        assert (shots / shot).stat().st_size > 10_000
    with PILImage.open(png_path) as png:  # the stored PNG, with its parameters in its metadata
        assert png.size == (1536, 1024) and "a red fox" in png.info.get("parameters", "")
        assert "Steps: 100" in png.info["parameters"]
    with stored_repository(data_dir) as repo:
        second, first = repo.list_images()
        assert (first.number, first.instruction) == (1, "a red fox in the snow at night")
        assert (second.number, second.parent_id, second.operation) == (2, first.id, "edit")
        assert repo.image_path(first).is_file() and repo.image_path(second).is_file()


EDIT_BOX_LABEL = "Edit an image: say what to change after its number"
#: true once the page shows exactly one edit box, holding the given text
ONE_EDIT_BOX_JS = """
([label, text]) => {
  const boxes = [...document.querySelectorAll("input")].filter(i => i.getAttribute("aria-label") === label);
  return boxes.length === 1 && boxes[0].value === text;
}
"""


def wait_for_messages(repo: Repository, conversation_id: int, count: int) -> list[Any]:
    """The conversation's messages once there are `count` of them (the turn has been stored)."""
    deadline = time.monotonic() + TURN_TIMEOUT_MS / 1000
    while time.monotonic() < deadline:
        messages = repo.messages(conversation_id)
        if len(messages) >= count:
            return messages
        time.sleep(0.1)
    pytest.fail(f"the conversation has {len(repo.messages(conversation_id))} messages, not {count}")


def test_send_edit_sends_what_the_edit_box_shows(sync_api: Any, quick_server: str, data_dir: Path) -> None:
    """Typed-but-unsent text for #1 must not be what "Send edit" sends after Edit on #2.

    Only a browser shows this: it keeps a form's unsent text itself, and sent it with the
    form even though the page had put "#2: " in the box.
    """
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(quick_server)
            chat_box = page.locator('[data-testid="stChatInputTextArea"]')
            chat_box.wait_for(timeout=30_000)
            for number, text in (
                (1, "a red fox in the snow at night"),
                (2, "a lighthouse on a cliff at dawn"),
            ):
                chat_box.fill(text)
                chat_box.press("Enter")
                sync_api.expect(page.get_by_text(f"#{number} · generate")).to_be_visible(
                    timeout=TURN_TIMEOUT_MS
                )

            def image_column(number: int) -> Any:
                return page.locator('[data-testid="stColumn"]').filter(has_text=f"#{number} · generate").first

            image_column(1).get_by_role("button", name="Edit").click()
            page.wait_for_function(ONE_EDIT_BOX_JS, arg=[EDIT_BOX_LABEL, "#1: "], timeout=30_000)
            page.get_by_label(EDIT_BOX_LABEL).fill("#1: add a moon")  # typed, no Enter
            image_column(2).get_by_role("button", name="Edit").click()
            # the new box alone (while the page reruns the old one may still be drawn beside it)
            page.wait_for_function(ONE_EDIT_BOX_JS, arg=[EDIT_BOX_LABEL, "#2: "], timeout=30_000)
            page.get_by_role("button", name="Send edit").click()
            sync_api.expect(page.get_by_label(EDIT_BOX_LABEL)).to_have_count(0, timeout=30_000)
        finally:
            browser.close()

    with stored_repository(data_dir) as repo:
        (conversation,) = repo.list_conversations()
        messages = wait_for_messages(repo, conversation.id, 6)
        assert [m.content for m in messages if m.role == "user"][-1].strip() == "#2:"
        assert all(
            image.instruction != "#1: add a moon" for image in repo.conversation_images(conversation.id)
        )


#: turns of several seconds, so the test has time to act while one runs
SLOW_TURN_ENVIRONMENT = {"ATELIER_STEPS": "100", "ATELIER_WIDTH": "2048", "ATELIER_HEIGHT": "2048"}


def test_a_turn_keeps_running_through_another_message_another_page_and_stops_on_stop(
    sync_api: Any, tmp_path: Path, data_dir: Path
) -> None:
    """What used to stop a running turn (a message sent meanwhile, opening History) no longer does.

    The second message waits under the first and is answered after it; Stop alone stops a turn,
    and the turn is kept as stopped.
    """
    with (
        serving(tmp_path, data_dir, SLOW_TURN_ENVIRONMENT) as server,
        sync_api.sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(server)
            chat_box = page.locator('[data-testid="stChatInputTextArea"]')
            chat_box.wait_for(timeout=30_000)
            running_step = page.get_by_text(re.compile(r"Step \d+ of 100")).first

            chat_box.fill("a red fox in the snow at night")
            chat_box.press("Enter")
            running_step.wait_for(timeout=TURN_TIMEOUT_MS)
            chat_box.fill("make it darker")
            chat_box.press("Enter")
            sync_api.expect(
                page.get_by_text("Waiting: this runs when the request above is done")
            ).to_be_visible(timeout=30_000)
            page.get_by_role("link", name="History").click()
            page.get_by_role("link", name="Chat").click()
            sync_api.expect(page.get_by_text("#1 · generate")).to_be_visible(timeout=TURN_TIMEOUT_MS)
            sync_api.expect(page.get_by_text("#2 · edit · from #1")).to_be_visible(timeout=TURN_TIMEOUT_MS)

            chat_box.fill("a lighthouse on a cliff at dawn")
            chat_box.press("Enter")
            stop_button = page.get_by_role("button", name="Stop", exact=True)
            stop_button.wait_for(timeout=TURN_TIMEOUT_MS)
            running_step.wait_for(timeout=TURN_TIMEOUT_MS)
            stop_button.click()
            sync_api.expect(
                page.get_by_test_id("stAlertContentWarning").filter(has_text="Cancelled: you stopped").first
            ).to_be_visible(timeout=TURN_TIMEOUT_MS)
        finally:
            browser.close()

    with stored_repository(data_dir) as repo:
        (conversation,) = repo.list_conversations()
        messages = wait_for_messages(repo, conversation.id, 6)
        assert [(m.role, m.status) for m in messages] == [
            ("user", "ok"),
            ("assistant", "ok"),
            ("user", "ok"),
            ("assistant", "ok"),
            ("user", "ok"),
            ("assistant", "cancelled"),
        ]
        first, second = repo.conversation_images(conversation.id)
        assert second.parent_id == first.id and second.operation == "edit"


def test_a_reload_during_a_new_chats_first_turn_opens_that_conversation(
    sync_api: Any, tmp_path: Path, data_dir: Path
) -> None:
    """The first turn creates the conversation; the URL names it while the turn still runs, so a
    reload then comes back to it (and its turn) instead of an empty welcome page."""
    with (
        serving(tmp_path, data_dir, SLOW_TURN_ENVIRONMENT) as server,
        sync_api.sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(server)
            chat_box = page.locator('[data-testid="stChatInputTextArea"]')
            chat_box.wait_for(timeout=30_000)
            request = "four images of a lighthouse on a cliff at dawn"  # ~10 s of steps
            chat_box.fill(request)
            chat_box.press("Enter")
            page.get_by_text(re.compile(r"Step \d+ of 400")).first.wait_for(timeout=TURN_TIMEOUT_MS)
            # named while the turn runs (it used to be only once the turn was over)
            sync_api.expect(page).to_have_url(re.compile(r"[?&]c=\d+"), timeout=3_000)
            assert page.get_by_text(re.compile(r"Step \d+ of 400")).count(), "the turn ended too soon"
            page.reload()
            sync_api.expect(page.get_by_text("#4 · generate")).to_be_visible(timeout=TURN_TIMEOUT_MS)
            sync_api.expect(page.get_by_text(request).first).to_be_visible()
        finally:
            browser.close()
