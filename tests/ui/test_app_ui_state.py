"""What the chat keeps and says between runs: the edit box, attachments, a conversation deleted
elsewhere, which images offer a re-roll, settings and the detail view across a reload, and
where an interrupted turn's reply is drawn.

Each test drives the app through `AppTest` and checks what was stored through a Repository.
"""

from __future__ import annotations

import io
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image as PILImage
from streamlit.testing.v1 import AppTest

from assistant.ui.chat import GONE_ACTION, GONE_IDLE, GONE_NEW
from assistant.ui.support import Keys
from storage.repository import Repository
from tests.ui.conftest import (
    APP_FILE,
    HISTORY_PAGE,
    TIMEOUT,
    assert_ok,
    captions,
    click,
    edit_box,
    new_app,
    send,
    send_edit,
    unescape,
)

FOX = "a red fox in the snow at night"
LIGHTHOUSE = "a lighthouse on a cliff at dawn"


def warnings(at: AppTest) -> list[str]:
    return [unescape(w.value) for w in at.warning]


def png_bytes(image: PILImage.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# ----- 1: the edit box sends what it shows ----------------------------------------------------


def test_each_edit_opens_a_fresh_box_for_its_image(app: AppTest, stored: Repository) -> None:
    """Text typed (not sent) for #1 must not ride along when Edit is clicked on #2.

    The browser keeps a form's unsent text per widget, so each opening needs a widget of its
    own (the browser test shows the stale send itself); here: a new key, showing "#2: ".
    """
    send(app, FOX)
    send(app, LIGHTHOUSE)
    conversation_id = app.session_state[Keys.CONVERSATION]
    first = stored.get_image_by_number(conversation_id, 1)
    second = stored.get_image_by_number(conversation_id, 2)

    click(app, f"atelier.edit.{first.id}")
    box_for_first = edit_box(app)
    box_for_first.set_value("#1: add a moon")  # typed, not sent
    click(app, f"atelier.edit.{second.id}")
    box_for_second = edit_box(app)
    assert box_for_second.key != box_for_first.key
    assert box_for_second.value == "#2: "
    assert [t.key for t in app.text_input].count(box_for_first.key) == 0  # the old box is gone

    box_for_second.set_value("#2: make it darker")
    send_edit(app)
    newest = stored.conversation_images(conversation_id)[-1]
    assert (newest.parent_id, newest.instruction) == (second.id, "#2: make it darker")
    assert [m.content for m in stored.messages(conversation_id) if m.role == "user"][
        -1
    ] == "#2: make it darker"


# ----- 5: a conversation deleted in another tab -------------------------------------------------


def test_a_message_to_a_conversation_deleted_elsewhere_says_it_started_a_new_one(
    app: AppTest, stored: Repository
) -> None:
    send(app, FOX)
    deleted = app.session_state[Keys.CONVERSATION]
    stored.delete_conversation(deleted)  # another tab deletes it

    send(app, LIGHTHOUSE)
    assert GONE_NEW in warnings(app)
    (conversation,) = stored.list_conversations()
    assert conversation.id != deleted and app.session_state[Keys.CONVERSATION] == conversation.id
    assert [m.content for m in stored.messages(conversation.id) if m.role == "user"] == [LIGHTHOUSE]
    assert "#1 · generate" in captions(app)

    app.run()  # said once, not on every later run
    assert_ok(app)
    assert GONE_NEW not in warnings(app)


def test_a_page_showing_a_deleted_conversation_says_so(app: AppTest, stored: Repository) -> None:
    send(app, FOX)
    stored.delete_conversation(app.session_state[Keys.CONVERSATION])
    app.run()  # any rerun of the stale tab
    assert_ok(app)
    assert GONE_IDLE in warnings(app)
    assert app.session_state[Keys.CONVERSATION] is None


def test_an_image_action_for_a_deleted_conversation_is_not_sent(app: AppTest, stored: Repository) -> None:
    send(app, FOX)
    conversation_id = app.session_state[Keys.CONVERSATION]
    first = stored.get_image_by_number(conversation_id, 1)
    stored.delete_conversation(conversation_id)

    click(app, f"atelier.var.{first.id}")  # the button still on the stale page
    assert GONE_ACTION in warnings(app)
    assert stored.list_conversations() == []  # no new conversation for "three variations of #1"


# ----- 9: Regenerate only where there is something to re-roll -----------------------------------


def test_regenerate_is_offered_only_for_images_a_model_made(app: AppTest, stored: Repository) -> None:
    photo = PILImage.new("RGB", (256, 256), (40, 120, 200))
    app.chat_input[0].set_value("make it a watercolor").upload("photo.png", png_bytes(photo), "image/png")
    app.run()
    assert_ok(app)
    conversation_id = app.session_state[Keys.CONVERSATION]
    send(app, "upscale #2 2x")
    send(app, "make #2 black and white")
    send(app, FOX)
    by_operation = {image.operation: image for image in stored.conversation_images(conversation_id)}
    assert set(by_operation) == {"upload", "img2img", "upscale", "transform", "generate"}

    offered = {b.key for b in app.button if b.key and b.key.startswith("atelier.regen.")}
    assert offered == {f"atelier.regen.{by_operation[op].id}" for op in ("img2img", "generate")}
    for operation in ("upload", "upscale", "transform"):  # the other actions are still there
        assert f"atelier.var.{by_operation[operation].id}" in {b.key for b in app.button}

    click(app, f"atelier.regen.{by_operation['img2img'].id}")  # and one that is offered works
    rerolled = stored.conversation_images(conversation_id)[-1]
    assert (rerolled.operation, rerolled.parent_id) == ("img2img", by_operation["upload"].id)


def test_upscale_is_offered_only_where_the_result_fits_the_side_limit(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, stored: Repository
) -> None:
    monkeypatch.setenv("ATELIER_MAX_SIDE", "1024")
    app = new_app()
    send(app, f"{FOX}, 512x512")
    send(app, "make #1 768x768")  # a resize: 768 px, whose 2× would be over the limit
    conversation_id = app.session_state[Keys.CONVERSATION]
    small, large = stored.conversation_images(conversation_id)
    assert (large.width, large.operation) == (768, "transform")
    offered = {b.key for b in app.button if b.key and b.key.startswith("atelier.up.")}
    assert offered == {f"atelier.up.{small.id}"}
    steps = (small.params or {})["steps"]
    # the seed first, as A1111 shows it, then the settings the sketch renderer used (no CFG)
    assert f"seed {small.seed} · 512×512 · {steps} steps" in captions(app)
    assert "768×768" in captions(app)  # a resize: no seed, no sampling settings
    click(app, f"atelier.up.{small.id}")
    # the answer lands at the end of a chat that may be long: a toast says where
    assert [t.value for t in app.toast] == [
        f"Asked for “upscale #{small.number} 2×”: the answer comes at the end of the chat."
    ]
    upscaled = stored.conversation_images(conversation_id)[-1]
    assert (upscaled.operation, upscaled.width, upscaled.parent_id) == ("upscale", 1024, small.id)


# ----- 10: settings and the detail view survive a reload ---------------------------------------


def reload(at: AppTest, page: str | None = None) -> AppTest:
    """A new session on the same URL, as a browser's reload is.

    AppTest can only open another page after a first run (on the chat page, which leaves the
    history's parameter alone), so a reload on the history page takes two runs here.
    """
    fresh = AppTest.from_file(str(APP_FILE), default_timeout=TIMEOUT)
    for name, value in at.query_params.items():
        fresh.query_params[name] = value[-1] if isinstance(value, list) else value
    fresh.run()
    if page is not None:
        fresh.switch_page(page).run()
    assert_ok(fresh)
    return fresh


def query(at: AppTest) -> dict[str, str]:
    return {name: value[-1] if isinstance(value, list) else value for name, value in at.query_params.items()}


def test_sidebar_settings_survive_a_reload(app: AppTest, stored: Repository) -> None:
    app.selectbox(key=Keys.SIZE).set_value("768x512")
    app.slider(key=Keys.STEPS).set_value(12)
    app.slider(key=Keys.GUIDANCE).set_value(3.5)
    app.selectbox(key=Keys.STYLE).set_value("watercolor")
    app.checkbox(key=Keys.VERBATIM).check()
    app.radio(key=Keys.SEED_MODE).set_value("Fixed").run()
    app.number_input(key=Keys.SEED).set_value(42).run()
    assert_ok(app)
    assert query(app) == {
        "size": "768x512",
        "steps": "12",
        "guidance": "3.5",
        "style": "watercolor",
        "exact": "1",
        "seed": "42",
    }

    again = reload(app)
    assert again.selectbox(key=Keys.SIZE).value == "768x512"
    assert again.slider(key=Keys.STEPS).value == 12
    assert again.slider(key=Keys.GUIDANCE).value == 3.5
    assert again.selectbox(key=Keys.STYLE).value == "watercolor"
    assert again.checkbox(key=Keys.VERBATIM).value is True
    assert again.radio(key=Keys.SEED_MODE).value == "Fixed"
    assert again.number_input(key=Keys.SEED).value == 42
    assert not again.warning  # no "value set both ways" warnings from the widgets

    send(again, "a red kite over green hills")  # and the image is made with them
    (image,) = stored.list_images()
    assert (image.width, image.height, image.seed, image.params["steps"]) == (768, 512, 42, 12)
    assert image.prompt == "a red kite over green hills"  # verbatim
    assert query(again)["c"] == str(again.session_state[Keys.CONVERSATION])

    # back to the defaults: a clean URL again (only the conversation)
    again.radio(key=Keys.SEED_MODE).set_value("Random")
    again.checkbox(key=Keys.VERBATIM).uncheck()
    again.selectbox(key=Keys.STYLE).set_value("(none)")
    again.slider(key=Keys.GUIDANCE).set_value(7.0)
    again.slider(key=Keys.STEPS).set_value(25)
    again.selectbox(key=Keys.SIZE).set_value("Backend default").run()
    assert_ok(again)
    assert set(query(again)) == {"c"}


def test_the_backend_choice_survives_a_reload_but_a_model_path_never_comes_from_the_url(
    app: AppTest,
) -> None:
    app.selectbox(key=Keys.BACKEND).set_value("diffusers").run()
    app.text_input(key=Keys.DIFFUSERS_MODEL).set_value("/models/sd15").run()
    assert_ok(app)
    assert "local_model" not in query(app)  # a link must not pick weights to download or load
    again = reload(app)
    assert again.selectbox(key=Keys.BACKEND).value == "diffusers"
    assert again.text_input(key=Keys.DIFFUSERS_MODEL).value == ""


def test_bad_settings_in_the_url_fall_back_to_the_defaults(data_dir: Path) -> None:
    at = AppTest.from_file(str(APP_FILE), default_timeout=TIMEOUT)
    bad = {"size": "99999x1", "steps": "100000", "guidance": "nan", "style": "<script>", "seed": "-1"}
    for name, value in {**bad, "backend": "gpu", "exact": "yes"}.items():
        at.query_params[name] = value
    at.run()
    assert_ok(at)
    assert at.selectbox(key=Keys.SIZE).value == "Backend default"
    assert at.slider(key=Keys.STEPS).value == 25
    assert at.selectbox(key=Keys.STYLE).value == "(none)"
    assert at.selectbox(key=Keys.BACKEND).value == "offline"
    assert at.radio(key=Keys.SEED_MODE).value == "Random"
    assert not set(query(at)) & {*bad, "backend", "exact"}  # the URL says what is really used


def test_the_detail_view_keeps_its_image_in_the_url(app: AppTest, stored: Repository) -> None:
    send(app, FOX)
    send(app, "make it darker")
    second = stored.list_images()[0]
    app.switch_page(HISTORY_PAGE).run()
    click(app, f"atelier.h.detail.{second.id}")
    assert query(app)["image"] == str(second.id)

    again = reload(app, HISTORY_PAGE)
    assert unescape(again.subheader[0].value).startswith("#2 · ")  # the detail, not the gallery
    assert query(again)["image"] == str(second.id)

    first = stored.get_image_by_number(second.conversation_id, 1)
    click(again, f"atelier.h.node.{first.id}")
    assert query(again)["image"] == str(first.id)
    click(again, "atelier.h.back")
    assert "image" not in query(again)
    assert not reload(again, HISTORY_PAGE).get("graphviz_chart")  # a reload now shows the gallery


# ----- 11: "use as init" stays until a typed message uses it ------------------------------------


def mask_uploads(at: AppTest) -> int:
    """How many times the mask box was emptied after a message used its mask."""
    return int(at.session_state[Keys.MASK_GENERATION]) if Keys.MASK_GENERATION in at.session_state else 0


def test_use_as_init_survives_a_button_action(app: AppTest, stored: Repository) -> None:
    send(app, FOX)
    send(app, LIGHTHOUSE)
    conversation_id = app.session_state[Keys.CONVERSATION]
    first = stored.get_image_by_number(conversation_id, 1)
    second = stored.get_image_by_number(conversation_id, 2)
    mask_generation = mask_uploads(app)

    click(app, f"atelier.init.{first.id}")
    click(app, f"atelier.var.{second.id}")  # a button's request: not the typed message
    variations = stored.conversation_images(conversation_id)[2:]
    assert {(v.operation, v.parent_id) for v in variations} == {("variation", second.id)}
    assert app.session_state[Keys.INIT_IMAGE] == first.id
    assert "#1 is attached to your next message as its starting image." in captions(app)
    assert mask_uploads(app) == mask_generation  # nor the mask box (it sent no mask)

    send(app, "turn it into a watercolor painting")  # the typed message uses it, once
    derived = stored.conversation_images(conversation_id)[-1]
    assert (derived.operation, derived.parent_id) == ("img2img", first.id)
    assert app.session_state[Keys.INIT_IMAGE] is None
    assert not [c for c in captions(app) if "is attached to your next message" in c]


# ----- 3: an interrupted turn's reply is drawn under the message it answers ---------------------


def chat_rows(at: AppTest) -> list[tuple[str, str]]:
    """(role, first text) of each chat message, top to bottom."""
    rows: list[tuple[str, str]] = []
    for message in at.chat_message:
        texts: list[Any] = [*message.warning, *message.error, *message.markdown]
        first = next((unescape(t.value) for t in texts if t.value), "")
        rows.append((message.name, first))
    return rows


def test_a_reply_cancelled_by_the_next_message_is_drawn_under_its_own_message(
    app: AppTest, stored: Repository
) -> None:
    from assistant.core import Assistant
    from assistant.events import PlanMade
    from assistant.runtime import open_repository
    from assistant.settings import Settings

    send(app, FOX)
    conversation_id = app.session_state[Keys.CONVERSATION]
    settings = Settings()
    repo = open_repository(settings)
    # "four cats" runs elsewhere (a CLI in the same data dir), "a dog" is sent meanwhile
    # (stored at once), and the first turn's cancellation is recorded only after that
    first = Assistant(settings, repo).respond(conversation_id, "four cats on a sofa")
    assert isinstance(next(first), PlanMade)
    second = Assistant(settings, repo).respond(conversation_id, "a dog in the park")
    assert isinstance(next(second), PlanMade)
    assert isinstance(first, Generator)
    first.close()  # its renderer stops reading it
    list(second)
    stored_order = [(m.role, m.status, m.content[:10]) for m in stored.messages(conversation_id)][2:]
    assert [(role, status) for role, status, _ in stored_order] == [
        ("user", "ok"),
        ("user", "ok"),
        ("assistant", "cancelled"),
        ("assistant", "ok"),
    ]

    app.run()
    assert_ok(app)
    rows = chat_rows(app)[2:]
    assert [role for role, _ in rows] == ["user", "assistant", "user", "assistant"]
    assert rows[0][1] == "four cats on a sofa" and rows[2][1] == "a dog in the park"
    cancelled = app.chat_message[3]
    assert cancelled.warning and not cancelled.get("image")  # the notice, right under "four cats"
    assert len(app.chat_message[5].get("image")) == 1  # the dog's image under the dog
