"""The chat page through `AppTest`, on the embedded default (offline backend, offline planner).

AppTest sees elements, not bytes: each test checks what the page shows (captions "#N",
messages, errors) and then what was stored (rows, parent ids, pixels) through a Repository.
"""

from __future__ import annotations

import io
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
    assert_ok,
    captions,
    click,
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

    reloaded = new_app()  # a reload: a new session with nothing selected
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

    click(app, f"atelier.edit.{first.id}")
    edit_box = app.text_input(key=Keys.EDIT_TEXT)
    assert edit_box.value == "#1: "
    edit_box.set_value("#1: at sunset")
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
    assert f"#{derived.number} · {derived.operation} · from #1" in shown


def test_sidebar_settings_reach_the_assistant(app: AppTest, stored: Repository) -> None:
    app.selectbox(key=Keys.SIZE).set_value("768x512")
    app.radio(key=Keys.SEED_MODE).set_value("Fixed").run()
    app.number_input(key=Keys.SEED).set_value(42)
    app.checkbox(key=Keys.VERBATIM).check()
    send(app, "a blue boat on a calm lake")
    (image,) = stored.list_images()
    assert (image.width, image.height, image.seed) == (768, 512, 42)
    assert image.prompt == "a blue boat on a calm lake"  # "use my prompt exactly"


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


def test_a_turn_stopped_by_a_rerun_shows_as_stopped_not_as_an_error(
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
    next(stream)  # the plan is out; then the page reruns before the image is made
    stream.close()

    reloaded = new_app()
    click(reloaded, f"atelier.conversation.{conversation.id}")
    stopped = [unescape(w.value) for w in reloaded.warning]
    assert any(text.startswith("Cancelled: you stopped this request") for text in stopped), stopped
    assert errors(reloaded) == []
    assert "make it snowier" in markdown_texts(reloaded)
    assert [m.status for m in stored.messages(conversation.id)] == ["ok", "ok", "ok", "cancelled"]
    assert len(stored.conversation_images(conversation.id)) == 1


def test_a_turn_shows_its_plan_and_progress_while_it_runs(
    app: AppTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the turn draws before the closing rerun replaces it with the stored messages."""
    import streamlit

    monkeypatch.setattr(streamlit, "rerun", lambda: None)  # AppTest runs the app in this process
    send(app, FOX)
    (status,) = app.status
    assert status.label == "Done" and status.icon == ":material/check:"
    plan = [unescape(m.value) for m in status.markdown]
    assert any(line.startswith("**Prompt:** a red fox in the snow at night") for line in plan)
    assert any(line.startswith("**Negative prompt:** ") for line in plan)
    (bar,) = status.get("progress")
    assert bar.proto.value == 100 and bar.proto.text == "Done"
    assert "#1 is ready." in [unescape(m.value) for m in status.markdown]


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
    common._backend.clear()
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
    app.get("file_uploader")[0].upload("mask.png", png_bytes(mask), "image/png")
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
