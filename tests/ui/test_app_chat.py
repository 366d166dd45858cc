"""The chat page through `AppTest`, on the embedded default (offline backend, offline planner).

AppTest sees elements, not bytes: each test checks what the page shows (captions "#N",
messages, errors) and then what was stored (rows, parent ids, pixels) through a Repository.
"""

from __future__ import annotations

import io
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image as PILImage
from streamlit.testing.v1 import AppTest

from assistant.ui.support import Keys
from storage.repository import Repository
from tests.ui.conftest import (
    APP_FILE,
    TIMEOUT,
    MediaFiles,
    assert_ok,
    captions,
    click,
    edit_box,
    errors,
    markdown_texts,
    new_app,
    send,
    unescape,
)

FOX = "a red fox in the snow at night"


def test_new_user_sees_the_banner_then_numbered_images_stored_with_lineage(
    app: AppTest, stored: Repository
) -> None:
    banner = unescape(app.info[0].value)
    assert "offline" in banner and "OPENAI_API_KEY" in banner and "ATELIER_DIFFUSERS_MODEL" in banner

    send(app, FOX)
    assert "#1 · generate" in captions(app)
    assert FOX in markdown_texts(app)
    assert not errors(app)

    send(app, "make it darker")
    second_caption = [c for c in captions(app) if c.startswith("#2 ")]
    assert second_caption and second_caption[0].endswith("from #1")

    (conversation,) = stored.list_conversations()
    first, second = stored.conversation_images(conversation.id)
    assert (first.number, second.number) == (1, 2)
    assert first.parent_id is None and second.parent_id == first.id
    assert first.instruction == FOX
    with PILImage.open(stored.image_path(first)) as png:
        assert png.size == (512, 512)
        assert "parameters" in png.info  # the stored PNG carries its generation parameters
    assert stored.load_image(second).tobytes() != stored.load_image(first).tobytes()
    roles = [(m.role, m.status) for m in stored.messages(conversation.id)]
    assert roles == [("user", "ok"), ("assistant", "ok")] * 2


def test_a_new_session_shows_the_stored_conversation(app: AppTest, stored: Repository) -> None:
    send(app, FOX)
    send(app, "make it darker")
    conversation_id = stored.list_conversations()[0].id

    reloaded = new_app()  # a new session without the link (a fresh tab): nothing selected
    assert not [c for c in captions(reloaded) if c.startswith("#")]
    click(reloaded, f"atelier.conversation.{conversation_id}")
    shown = captions(reloaded)
    assert "#1 · generate" in shown and any(c.startswith("#2 ") for c in shown)
    assert FOX in markdown_texts(reloaded) and "make it darker" in markdown_texts(reloaded)


def test_switching_conversations_in_the_sidebar_shows_each_history(app: AppTest, stored: Repository) -> None:
    send(app, FOX)
    click(app, "atelier.new_conversation")
    assert not [c for c in captions(app) if c.startswith("#")]
    send(app, "a lighthouse on a cliff at dawn")
    fox_id, lighthouse_id = sorted(c.id for c in stored.list_conversations())

    click(app, f"atelier.conversation.{fox_id}")
    assert FOX in markdown_texts(app)
    assert "a lighthouse on a cliff at dawn" not in markdown_texts(app)
    assert app.session_state[Keys.CONVERSATION] == fox_id

    click(app, f"atelier.conversation.{lighthouse_id}")
    assert "a lighthouse on a cliff at dawn" in markdown_texts(app)
    assert FOX not in markdown_texts(app)
    # each conversation numbers its own images
    assert "#1 · generate" in captions(app)
    assert [i.number for i in stored.conversation_images(lighthouse_id)] == [1]


def test_image_actions_send_requests_about_that_image(app: AppTest, stored: Repository) -> None:
    send(app, FOX)
    conversation_id = app.session_state[Keys.CONVERSATION]
    first = stored.get_image_by_number(conversation_id, 1)

    click(app, f"atelier.var.{first.id}")
    variations = stored.conversation_images(conversation_id)[1:]
    assert len(variations) == 3
    assert {(v.parent_id, v.operation) for v in variations} == {(first.id, "variation")}
    assert len({v.sha256 for v in variations}) == 3

    click(app, f"atelier.up.{first.id}")
    upscaled = stored.conversation_images(conversation_id)[-1]
    assert (upscaled.operation, upscaled.parent_id, upscaled.width) == ("upscale", first.id, 1024)

    click(app, f"atelier.regen.{first.id}")
    regenerated = stored.conversation_images(conversation_id)[-1]
    assert regenerated.operation == "generate" and regenerated.seed != first.seed
    assert regenerated.prompt == first.prompt
    # a re-roll of #1 has no parent, so its caption says what it re-rolled
    assert f"#{regenerated.number} · generate · re-roll of #1" in captions(app)

    click(app, f"atelier.edit.{first.id}")
    box = edit_box(app)
    assert box.value == "#1: "
    box.set_value("#1: at sunset")
    app.button(key="FormSubmitter:atelier.edit_form-Send edit").click().run()
    assert_ok(app)
    edited = stored.conversation_images(conversation_id)[-1]
    assert edited.parent_id == first.id and edited.instruction == "#1: at sunset"

    click(app, f"atelier.init.{first.id}")
    assert app.session_state[Keys.INIT_IMAGE] == first.id
    assert "#1 is attached to your next message as its starting image." in captions(app)
    send(app, "turn it into a watercolor painting")
    derived = stored.conversation_images(conversation_id)[-1]
    # the chosen image is the source itself, so the lineage links the result to it
    assert (derived.operation, derived.parent_id) == ("img2img", first.id)
    assert "watercolor" in derived.prompt
    assert all(image.operation != "upload" for image in stored.conversation_images(conversation_id))
    assert app.session_state[Keys.INIT_IMAGE] is None  # used once
    shown = captions(app)
    assert f"#{derived.number} · {derived.operation} · from #1 · watercolor" in shown  # with its style


def test_sidebar_settings_reach_the_stored_image(app: AppTest, stored: Repository) -> None:
    """Each image setting in the sidebar ends up in what was made and recorded."""
    from assistant.rewrite import STYLE_PRESETS

    app.selectbox(key=Keys.SIZE).set_value("768x512")
    app.slider(key=Keys.STEPS).set_value(12)
    app.slider(key=Keys.GUIDANCE).set_value(3.5)
    app.selectbox(key=Keys.STYLE).set_value("watercolor")
    app.radio(key=Keys.SEED_MODE).set_value("Fixed").run()
    app.number_input(key=Keys.SEED).set_value(42)
    send(app, "a blue boat on a calm lake")

    (styled,) = stored.list_images()
    assert (styled.width, styled.height, styled.seed) == (768, 512, 42)
    assert styled.params["steps"] == 12 and styled.params["style"] == "watercolor"
    assert styled.prompt.startswith("a blue boat on a calm lake")
    assert all(term in styled.prompt for term in STYLE_PRESETS["watercolor"].positive)
    assert "**Style:** watercolor" in markdown_texts(app)  # the plan the user can open says so
    # the offline renderer has no guidance of its own; the backend call records what it was offered
    assert styled.generation_id is not None
    generation, _ = stored.generation(styled.generation_id)
    assert (generation.params["guidance"], generation.params["steps"]) == (3.5, 12)

    app.checkbox(key=Keys.VERBATIM).check()
    send(app, "a red kite over green hills")
    verbatim = stored.list_images()[0]
    assert verbatim.prompt == "a red kite over green hills"  # "use my prompt exactly": no style added
    assert verbatim.params["style"] is None
    assert (verbatim.width, verbatim.height, verbatim.seed, verbatim.params["steps"]) == (768, 512, 42, 12)

    app.checkbox(key=Keys.VERBATIM).uncheck()
    app.radio(key=Keys.SEED_MODE).set_value("Random").run()
    send(app, "a blue boat on a calm lake")
    random_seed = stored.list_images()[0]
    assert random_seed.prompt == styled.prompt and random_seed.seed != 42


def test_the_sidebar_exports_the_conversation_as_a_zip_that_imports_back(
    app: AppTest, stored: Repository, media: MediaFiles, tmp_path: Path
) -> None:
    from storage.archive import import_conversation

    assert not [b for b in app.get("download_button") if b.proto.label == "Export conversation (zip)"]
    send(app, FOX)
    send(app, "make it snowier")
    (export,) = [b for b in app.get("download_button") if b.proto.label == "Export conversation (zip)"]
    assert export.proto.deferred_file_id  # the zip is made on the click, not on every rerun
    zip_path = tmp_path / "download.zip"
    zip_path.write_bytes(media.download(export))
    elsewhere = Repository.open(f"sqlite:///{tmp_path / 'other.db'}", tmp_path / "other-images")
    imported = import_conversation(elsewhere, zip_path)
    images = elsewhere.conversation_images(imported)
    assert [(i.number, i.operation) for i in images] == [(1, "generate"), (2, "edit")]
    originals = stored.list_images()
    assert {elsewhere.image_bytes(i) for i in images} == {stored.image_bytes(i) for i in originals}
    elsewhere.db.dispose()


def test_the_chat_shows_a_cached_thumbnail_and_downloads_the_full_png(
    app: AppTest, stored: Repository, media: MediaFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    from assistant.ui.common import THUMBNAIL_SIDE

    app.selectbox(key=Keys.SIZE).set_value("1024x768")
    send(app, FOX)
    (image,) = stored.list_images()
    (shown,) = app.image
    with PILImage.open(io.BytesIO(media.image(shown))) as thumbnail:
        assert thumbnail.size == (THUMBNAIL_SIDE, THUMBNAIL_SIDE * 3 // 4)

    (download,) = [b for b in app.get("download_button") if b.proto.label != "Export conversation (zip)"]
    data = media.download(download)
    assert data == stored.image_bytes(image)  # the stored file itself, not the thumbnail
    with PILImage.open(io.BytesIO(data)) as png:
        assert png.size == (1024, 768)
        assert "Seed: " in png.info["parameters"] and FOX in png.info["parameters"]
        assert '"number": 1' in png.info["atelier"]  # the lineage chunk

    # later reruns draw the thumbnail from the cache: the full-size file is not read again
    opened: list[str] = []
    real_open = PILImage.open

    def recording_open(fp: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(fp, str | Path):
            opened.append(str(fp))
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(PILImage, "open", recording_open)
    app.run()
    app.slider(key=Keys.STEPS).set_value(10).run()
    assert_ok(app)
    assert len(app.image) == 1
    assert str(stored.image_path(image)) not in opened, opened


BROKEN_BACKENDS = {
    "openai-unreachable": {
        "ATELIER_BACKEND": "openai",
        "OPENAI_API_KEY": "sk-test-not-a-real-key-0000",
        "ATELIER_OPENAI_BASE_URL": "http://127.0.0.1:9/v1",  # nothing listens on port 9
        "ATELIER_OPENAI_MAX_RETRIES": "0",
        "ATELIER_OPENAI_TIMEOUT": "5",
        # a chat base URL without a chat model keeps planning on the offline rules (no LLM call)
        "ATELIER_CHAT_BASE_URL": "http://127.0.0.1:9/v1",
    },
    "diffusers-missing-folder": {
        "ATELIER_BACKEND": "diffusers",
        "ATELIER_DIFFUSERS_MODEL": "/nonexistent/atelier-test-model",
    },
}


@pytest.mark.parametrize("environment", BROKEN_BACKENDS.values(), ids=BROKEN_BACKENDS.keys())
def test_a_backend_failure_is_an_error_and_the_conversation_stays_usable(
    data_dir: Path, stored: Repository, monkeypatch: pytest.MonkeyPatch, environment: dict[str, str]
) -> None:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    app = new_app()
    banner = unescape(app.caption[0].value)  # the banner names the configured backend
    assert banner.startswith(("Images: OpenAI", "Images: local diffusers model")), banner

    send(app, FOX)
    assert errors(app), "the failure must be shown as an error element"
    assert not [c for c in captions(app) if c.startswith("#1")]
    (conversation,) = stored.list_conversations()
    messages = stored.messages(conversation.id)
    assert [(m.role, m.status) for m in messages] == [("user", "ok"), ("assistant", "failed")]
    assert errors(app) == [messages[-1].content]

    app.selectbox(key=Keys.BACKEND).set_value("offline").run()
    send(app, FOX)
    assert "#1 · generate" in captions(app)
    assert len(errors(app)) == 1  # the earlier failure stays in the history
    assert [i.backend for i in stored.conversation_images(conversation.id)] == ["offline"]


def test_an_interrupted_turn_shows_as_stopped_not_as_an_error(
    app: AppTest, stored: Repository, data_dir: Path
) -> None:
    from assistant.core import Assistant
    from assistant.runtime import open_repository
    from assistant.settings import Settings

    send(app, FOX)
    (conversation,) = stored.list_conversations()
    settings = Settings()
    assistant = Assistant(settings, open_repository(settings))
    stream = assistant.respond(conversation.id, "make it snowier")
    # a program driving the turn stops reading it once the plan is out (the page's own turns run
    # in lanes and are not interrupted: tests/ui/test_app_turn_lanes.py)
    assert isinstance(stream, Generator)
    next(stream)
    stream.close()

    reloaded = new_app()
    click(reloaded, f"atelier.conversation.{conversation.id}")
    stopped = [unescape(w.value) for w in reloaded.warning]
    assert any(
        text.startswith("Interrupted before it finished (what was running it stopped)") for text in stopped
    ), stopped
    assert errors(reloaded) == []
    assert "make it snowier" in markdown_texts(reloaded)
    assert [m.status for m in stored.messages(conversation.id)] == ["ok", "ok", "ok", "cancelled"]
    assert len(stored.conversation_images(conversation.id)) == 1


def test_a_turn_stopped_part_way_shows_its_finished_images_under_the_stop(
    app: AppTest, stored: Repository, data_dir: Path
) -> None:
    from assistant.core import Assistant
    from assistant.runtime import open_repository
    from assistant.settings import Settings
    from tests.assistant.test_turn_edges import StopAtStep

    send(app, FOX)
    (conversation,) = stored.list_conversations()
    settings = Settings()
    steps = settings.steps
    assistant = Assistant(settings, open_repository(settings), backend=StopAtStep(2 * steps + 1))
    list(assistant.respond(conversation.id, "three of a lighthouse at dusk"))  # Stop in the third

    reloaded = new_app()
    click(reloaded, f"atelier.conversation.{conversation.id}")
    stopped = [unescape(w.value) for w in reloaded.warning]
    assert any(text.startswith("Stopped: kept the 2 images finished before you stopped") for text in stopped)
    assert errors(reloaded) == []
    shown = captions(reloaded)
    new = [c for c in shown if c.startswith(("#2 ", "#3 ", "#4 "))]
    assert new == ["#2 · generate", "#3 · generate"], shown


def _sent_messages(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every message the app sends to the browser, in order (AppTest's tree keeps only the last)."""
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
    from streamlit.runtime.forward_msg_queue import ForwardMsgQueue

    sent: list[Any] = []
    real = ForwardMsgQueue.enqueue

    def recording(self: ForwardMsgQueue, msg: ForwardMsg) -> None:
        copy = ForwardMsg()
        copy.CopyFrom(msg)
        sent.append(copy)
        real(self, msg)

    monkeypatch.setattr(ForwardMsgQueue, "enqueue", recording)
    return sent


def test_a_turn_shows_its_plan_and_progress_while_it_runs(
    app: AppTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the backend works, the status box is open and running, with the plan and a rising bar.

    AppTest only keeps the final tree, so the test reads the messages the browser received
    during the turn, in order, and checks the status box's state at each progress step.
    """
    import streamlit
    from streamlit.proto.Block_pb2 import Block

    from tools.offline import OfflineBackend

    real_run = OfflineBackend.run

    def paced(self: OfflineBackend, request: Any, progress: Any = None, cancel: Any = None) -> Any:
        def step(done: int, total: int) -> None:  # steps that take a while, as a real model's do
            time.sleep(0.02)
            progress(done, total)

        return real_run(self, request, step if progress else None, cancel)

    monkeypatch.setattr(OfflineBackend, "run", paced)
    sent = _sent_messages(monkeypatch)
    monkeypatch.setattr(streamlit, "rerun", lambda: None)  # keep the turn's own drawing
    send(app, FOX)

    deltas = [(tuple(m.metadata.delta_path), m.delta) for m in sent if m.WhichOneof("type") == "delta"]
    status_path = next(
        path
        for path, delta in deltas
        if delta.WhichOneof("type") == "add_block"
        and delta.add_block.WhichOneof("type") == "expandable"
        and delta.add_block.expandable.label.startswith("Understanding")
    )
    box: Block.Expandable | None = None
    plan_seen_open = False
    steps: list[tuple[int, int, int]] = []  # (k, n, bar value) for each "Step k of n"
    for path, delta in deltas:
        kind = delta.WhichOneof("type")
        if path == status_path and kind == "add_block":
            box = delta.add_block.expandable
            continue
        if path[: len(status_path)] != status_path or kind != "new_element":
            continue
        assert box is not None
        is_open = box.HasField("expanded") and box.expanded and box.state == Block.Expandable.RUNNING
        element = delta.new_element
        if element.WhichOneof("type") == "markdown" and element.markdown.body.startswith("**Prompt:**"):
            plan_seen_open = is_open
        if element.WhichOneof("type") == "progress" and element.progress.text.startswith("Step "):
            assert is_open, f"the status box is collapsed or not running at {element.progress.text!r}: {box}"
            _, k, _, n = element.progress.text.split()
            steps.append((int(k), int(n), element.progress.value))

    assert plan_seen_open, "the rewritten prompt must appear in an open, running status box"
    total = steps[-1][1]
    assert total == 25  # the default number of steps, one Progress event each
    # the page draws the newest step of what arrived since it last looked: rising, to the end
    drawn = [k for k, _, _ in steps]
    assert drawn == sorted(set(drawn)) and drawn[-1] == total and len(drawn) >= 2
    values = [value for _, _, value in steps]
    assert values == sorted(values) and values[0] < 100 and values[-1] == 100

    # and when it is over: collapsed, complete, with the plan and the finished bar inside
    (status,) = app.status
    assert status.label == "Done" and status.icon == ":material/check:"
    assert box is not None and box.state == Block.Expandable.COMPLETE and not box.expanded
    plan = [unescape(m.value) for m in status.markdown]
    assert any(line.startswith("**Prompt:** a red fox in the snow at night") for line in plan)
    assert any(line.startswith("**Negative prompt:** ") for line in plan)
    (bar,) = status.get("progress")
    assert bar.proto.value == 100 and bar.proto.text == "Done"
    assert "#1 is ready." in plan


def test_rename_and_delete_with_confirmation(app: AppTest, stored: Repository) -> None:
    send(app, FOX)
    conversation_id = app.session_state[Keys.CONVERSATION]
    images_dir = Path(stored.files.root) if hasattr(stored.files, "root") else None

    app.text_input(key=f"atelier.rename.{conversation_id}").set_value("Foxes")
    click(app, f"atelier.rename_button.{conversation_id}")
    assert stored.get_conversation(conversation_id).title == "Foxes"
    assert unescape(app.title[0].value) == "Foxes"

    click(app, f"atelier.delete.{conversation_id}")
    assert stored.list_conversations(), "nothing is deleted before the confirmation"
    assert any("cannot be undone" in w.value for w in app.warning)
    click(app, "atelier.delete_cancel")
    assert stored.list_conversations()

    click(app, f"atelier.delete.{conversation_id}")
    click(app, "atelier.delete_confirm")
    assert stored.list_conversations() == []
    assert stored.list_images() == []
    assert app.session_state[Keys.CONVERSATION] is None
    if images_dir is not None:
        assert not list(images_dir.rglob("*.png"))


def test_user_text_is_escaped_never_html(app: AppTest) -> None:
    hostile = "<img src=x onerror=alert(1)> **bold** :red[red] $x^2$ [link](http://example.com)"
    send(app, hostile)
    assert_ok(app)
    user_markdown = [m for m in app.markdown if unescape(m.value) == hostile]
    assert user_markdown, "the user's words are shown exactly as typed"
    assert "**bold**" not in user_markdown[0].value  # escaped, so not rendered as bold
    assert all(not m.proto.allow_html for m in app.markdown)
    assert all(not m.proto.allow_html for m in app.get("error"))


def test_the_backend_is_built_once_per_configuration(
    app: AppTest, stored: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reruns and turns reuse the cached backend (a diffusers pipeline must load once)."""
    import assistant.backends
    from assistant.ui import common

    built: list[str] = []
    real = assistant.backends.make_backend

    def counting(settings: Any, choice: Any = None) -> Any:
        built.append(settings.effective_backend.value)
        return real(settings, choice)

    monkeypatch.setattr(assistant.backends, "make_backend", counting)
    common.clear_backends()
    send(app, FOX)
    send(app, "make it darker")
    app.slider(key=Keys.STEPS).set_value(10).run()  # a setting the backend does not depend on
    send(app, "make it brighter")
    assert built == ["offline"]
    assert len(stored.list_images()) == 3


def png_bytes(image: PILImage.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_an_uploaded_image_and_mask_are_sent_with_the_message(app: AppTest, stored: Repository) -> None:
    photo = PILImage.new("RGB", (256, 256), (40, 120, 200))
    mask = PILImage.new("L", (256, 256), 0)
    mask.paste(255, (64, 64, 192, 192))
    app.chat_input[0].set_value("a pond with ducks").upload("photo.png", png_bytes(photo), "image/png")
    app.file_uploader[0].upload("mask.png", png_bytes(mask), "image/png")
    app.run()
    assert_ok(app)

    upload, painted = stored.list_images()[::-1]
    assert upload.operation == "upload" and (upload.width, upload.height) == (256, 256)
    assert painted.operation == "inpaint" and painted.parent_id == upload.id
    assert painted.mask_sha256 is not None
    assert "#2 · inpaint · from #1" in captions(app)
    # the mask uploader starts empty again: the next message is not an inpaint by accident
    send(app, "a lighthouse on a cliff at dawn")
    assert stored.list_images()[0].operation == "generate"


def test_a_key_from_streamlit_secrets_selects_openai_and_is_never_shown(data_dir: Path) -> None:
    """Keys may live in `.streamlit/secrets.toml` instead of the environment."""
    sentinel = "sk-test-SENTINEL-SECRETS-5151"
    at = AppTest.from_file(str(APP_FILE), default_timeout=TIMEOUT)
    at.secrets["OPENAI_API_KEY"] = sentinel
    at.run()
    assert_ok(at)
    banner = [unescape(str(c.value)) for c in at.caption if "planning" in str(c.value)]
    assert banner and "OpenAI" in banner[0]  # auto: a key selects the OpenAI backend
    rendered = " ".join(str(element.value) for element in [*at.info, *at.markdown, *at.caption])
    assert sentinel not in rendered


MISSING = "The file of this image is missing"


def test_a_missing_image_file_is_a_warning_and_the_page_keeps_working(
    app: AppTest, stored: Repository
) -> None:
    send(app, FOX)
    send(app, "make it darker")
    conversation_id = app.session_state[Keys.CONVERSATION]
    first = stored.get_image_by_number(conversation_id, 1)
    stored.image_path(first).unlink()  # lost outside Atelier (a disk cleanup, a bad restore)

    app.run()
    assert_ok(app)
    assert [w.value for w in app.warning if w.value.startswith(MISSING)] != []
    assert len([w for w in app.warning if w.value.startswith(MISSING)]) == 1  # #2 is still there
    assert "#1 · generate" in captions(app) and any(c.startswith("#2 ") for c in captions(app))
    assert len(app.image) == 1  # the other image is drawn
    assert app.chat_input, "the chat input must still be drawn"
    send(app, "a lighthouse on a cliff at dawn")  # and it still works
    assert "#3 · generate" in captions(app)


def test_the_url_keeps_the_conversation_so_a_reload_shows_it(app: AppTest, stored: Repository) -> None:
    send(app, FOX)
    conversation_id = app.session_state[Keys.CONVERSATION]
    assert app.query_params["c"] == str(conversation_id)

    reloaded = AppTest.from_file(str(APP_FILE), default_timeout=TIMEOUT)
    reloaded.query_params["c"] = str(conversation_id)  # a reload: a new session on the same URL
    reloaded.run()
    assert_ok(reloaded)
    assert reloaded.session_state[Keys.CONVERSATION] == conversation_id
    assert unescape(reloaded.title[0].value) == FOX
    assert "#1 · generate" in captions(reloaded)
    selected = reloaded.sidebar.button(key=f"atelier.conversation.{conversation_id}")
    assert selected.proto.type == "primary"

    click(reloaded, "atelier.new_conversation")
    assert "c" not in reloaded.query_params
    send(reloaded, "a lighthouse on a cliff at dawn")
    lighthouse_id = reloaded.session_state[Keys.CONVERSATION]
    assert lighthouse_id != conversation_id
    assert reloaded.query_params["c"] == str(lighthouse_id)
    click(reloaded, f"atelier.conversation.{conversation_id}")
    assert reloaded.query_params["c"] == str(conversation_id)


@pytest.mark.parametrize("bad", ["999", "abc", "-1", "1e3", ""])
def test_a_bad_conversation_in_the_url_starts_fresh(app: AppTest, stored: Repository, bad: str) -> None:
    send(app, FOX)  # conversation 1 exists; none of the bad values names it
    at = AppTest.from_file(str(APP_FILE), default_timeout=TIMEOUT)
    at.query_params["c"] = bad
    at.run()
    assert_ok(at)
    assert at.session_state[Keys.CONVERSATION] is None
    assert not [c for c in captions(at) if c.startswith("#")]
    assert "c" not in at.query_params
    assert any("no longer exists" in info.value for info in at.info)
    assert at.chat_input
    send(at, "a lighthouse on a cliff at dawn")
    assert "#1 · generate" in captions(at)
    assert len(stored.list_conversations()) == 2


def test_the_steps_slider_stops_at_the_backends_limit(app: AppTest, stored: Repository) -> None:
    from tools.offline import MAX_STEPS

    assert app.slider(key=Keys.STEPS).max == MAX_STEPS  # offline: every offered value works
    app.selectbox(key=Keys.BACKEND).set_value("diffusers").run()
    assert app.slider(key=Keys.STEPS).max == 150  # ATELIER_MAX_STEPS' default
    app.slider(key=Keys.STEPS).set_value(140).run()
    app.selectbox(key=Keys.BACKEND).set_value("offline").run()
    assert_ok(app)
    steps = app.slider(key=Keys.STEPS)
    assert (steps.max, steps.value) == (MAX_STEPS, MAX_STEPS)

    send(app, FOX)  # the top of the slider is a value the backend accepts
    assert not errors(app)
    (image,) = stored.list_images()
    assert image.params["steps"] == MAX_STEPS


def test_the_banner_says_when_no_local_model_is_set(app: AppTest) -> None:
    app.selectbox(key=Keys.BACKEND).set_value("diffusers").run()
    assert_ok(app)
    banner = [unescape(c.value) for c in app.caption if c.value.startswith("Images")]
    assert banner, "the banner names the active backend"
    assert "None" not in banner[0]
    assert "no model set: set ATELIER_DIFFUSERS_MODEL=/path/to/model" in banner[0]

    app.text_input(key=Keys.DIFFUSERS_MODEL).set_value("/models/sd15").run()
    banner = [unescape(c.value) for c in app.caption if c.value.startswith("Images")]
    assert banner[0].startswith("Images: local diffusers model /models/sd15;")


def test_regenerating_a_derived_image_adds_a_sibling(app: AppTest, stored: Repository) -> None:
    send(app, FOX)
    send(app, "make it darker")
    conversation_id = app.session_state[Keys.CONVERSATION]
    first = stored.get_image_by_number(conversation_id, 1)
    second = stored.get_image_by_number(conversation_id, 2)
    assert second.parent_id == first.id

    click(app, f"atelier.regen.{second.id}")
    third = stored.get_image_by_number(conversation_id, 3)
    assert third.parent_id == first.id  # a sibling of #2, not its child
    assert (third.operation, third.prompt) == (second.operation, second.prompt)
    assert third.seed != second.seed and third.sha256 != second.sha256
    assert "#3 · edit · from #1 · re-roll of #2" in captions(app)  # a sibling of #2, and says so


class FlakyBackend:
    """The offline backend, except that its first call fails the way a bug would."""

    def __init__(self) -> None:
        from tools.offline import OfflineBackend

        self.inner = OfflineBackend()
        self.name, self.model, self.capabilities = self.inner.name, self.inner.model, self.inner.capabilities
        self.calls = 0

    def estimate_cost(self, request: Any) -> float | None:
        return self.inner.estimate_cost(request)

    def run(self, request: Any, progress: Any = None, cancel: Any = None) -> Any:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return self.inner.run(request, progress, cancel)


@pytest.fixture
def flaky_backend(monkeypatch: pytest.MonkeyPatch) -> Iterator[FlakyBackend]:
    """Serve every turn from one FlakyBackend (the app caches backends per configuration)."""
    import assistant.backends
    from assistant.ui import common

    backend = FlakyBackend()
    monkeypatch.setattr(assistant.backends, "make_backend", lambda settings, choice=None: backend)
    common.clear_backends()
    yield backend
    common.clear_backends()  # later tests get a real backend again


def test_an_unexpected_backend_exception_is_an_error_not_a_traceback(
    flaky_backend: FlakyBackend, data_dir: Path, stored: Repository
) -> None:
    app = new_app()
    send(app, FOX)  # send() also asserts that no exception element is shown
    assert flaky_backend.calls == 1
    shown = errors(app)
    assert len(shown) == 1
    assert "Traceback" not in shown[0]
    assert not [c for c in captions(app) if c.startswith("#1")]

    send(app, FOX)
    assert flaky_backend.calls == 2
    assert "#1 · generate" in captions(app)
    assert len(errors(app)) == 1  # the earlier failure stays in the history
    (conversation,) = stored.list_conversations()
    assert [m.status for m in stored.messages(conversation.id)] == ["ok", "failed", "ok", "ok"]


def test_a_lineage_answer_shows_each_step_small_and_opens_the_tree(app: AppTest, stored: Repository) -> None:
    send(app, "a cozy cabin at night")
    send(app, "make it snowier")
    send(app, "a red fox in the snow")  # #3, a root of its own: not in the chain
    send(app, "#2 but at sunset")
    send(app, "show me how #4 came about")
    assert_ok(app)
    answer = app.chat_message[-1]
    assert "#1" in unescape(answer.markdown[0].value) and "#4" in unescape(answer.markdown[0].value)
    steps = [unescape(c.value) for c in answer.caption]
    assert steps == ["#1 · generate", "#2 · edit", "#4 · edit"], steps  # root first, #3 not in it
    (conversation,) = stored.list_conversations()
    four = stored.get_image_by_number(conversation.id, 4)
    button = answer.button(key=f"atelier.chain.{stored.messages(conversation.id)[-1].id}.{four.id}")
    assert button.label == "Open the lineage of #4"


def test_pictures_of_one_turn_in_several_styles_are_captioned_with_their_style(
    app: AppTest, stored: Repository
) -> None:
    send(app, FOX)
    send(app, "show #1 in watercolor and pixel art")
    shown = {c.split(" · ")[0]: c for c in captions(app) if c.startswith("#")}
    assert shown["#2"].endswith(" · watercolor") and shown["#3"].endswith(" · pixel art"), shown
    assert shown["#1"] == "#1 · generate"  # drawn in no named style: nothing added
    (conversation,) = stored.list_conversations()
    styles = [(image.params or {}).get("style") for image in stored.conversation_images(conversation.id)]
    assert styles == [None, "watercolor", "pixel art"]
