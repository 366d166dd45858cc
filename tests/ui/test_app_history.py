"""The history page through `AppTest`: gallery search and filters, image detail, lineage graph,
the way back into the chat; plus the DOT builder, since lineage labels are user text."""

from __future__ import annotations

import re
from datetime import date, timedelta

import pytest
from streamlit.testing.v1 import AppTest

from assistant.ui.history import CONVERSATION_CHOICES, CONVERSATION_KEY, CONVERSATION_QUERY_KEY
from assistant.ui.support import Keys, lineage_dot
from storage.models import Conversation, Image
from storage.repository import LineageNode, Repository
from tests.storage.helpers import add_generated
from tests.ui.conftest import CHAT_PAGE, HISTORY_PAGE, assert_ok, captions, click, edit_box, send, unescape

FOX = "a red fox in the snow at night"
LIGHTHOUSE = "a lighthouse on a cliff at dawn"


def gallery_numbers(at: AppTest) -> list[str]:
    """The '#N · operation · backend' captions of the gallery cells, newest first."""
    return [c for c in captions(at) if c.startswith("#")]


@pytest.fixture
def history(app: AppTest) -> AppTest:
    """Two conversations (fox: #1 and its edit #2; lighthouse: #1), then the history page."""
    send(app, FOX)
    send(app, "make it darker")
    click(app, "atelier.new_conversation")
    send(app, LIGHTHOUSE)
    app.switch_page(HISTORY_PAGE).run()
    assert_ok(app)
    return app


def test_gallery_search_and_filters(history: AppTest, stored: Repository) -> None:
    assert gallery_numbers(history) == [
        "#1 · generate · offline",
        "#2 · edit · offline",
        "#1 · generate · offline",
    ]

    history.text_input(key="atelier.h.query").set_value("lighthouse").run()
    assert gallery_numbers(history) == ["#1 · generate · offline"]
    history.text_input(key="atelier.h.query").set_value("fox").run()
    assert gallery_numbers(history) == ["#2 · edit · offline", "#1 · generate · offline"]
    history.text_input(key="atelier.h.query").set_value("zebra").run()
    assert gallery_numbers(history) == []
    assert any("No images match" in info.value for info in history.info)

    history.text_input(key="atelier.h.query").set_value("").run()
    history.selectbox(key="atelier.h.operation").set_value("edit").run()
    assert gallery_numbers(history) == ["#2 · edit · offline"]
    history.selectbox(key="atelier.h.operation").set_value("All").run()

    fox_id = min(c.id for c in stored.list_conversations())
    history.selectbox(key="atelier.h.conversation").set_value(fox_id).run()
    assert gallery_numbers(history) == ["#2 · edit · offline", "#1 · generate · offline"]
    history.selectbox(key="atelier.h.conversation").set_value(0).run()  # "All conversations"

    today = date.today()
    history.date_input(key="atelier.h.since").set_value(today + timedelta(days=2)).run()
    assert gallery_numbers(history) == []
    history.date_input(key="atelier.h.since").set_value(today - timedelta(days=2)).run()
    history.date_input(key="atelier.h.until").set_value(today + timedelta(days=2)).run()
    assert len(gallery_numbers(history)) == 3
    assert_ok(history)


def test_detail_shows_prompts_lineage_graph_and_parent(history: AppTest, stored: Repository) -> None:
    fox_id = min(c.id for c in stored.list_conversations())
    first, second = stored.conversation_images(fox_id)
    history.text_input(key="atelier.h.query").set_value("fox").run()
    click(history, f"atelier.h.detail.{second.id}")

    assert unescape(history.subheader[0].value).startswith("#2 · ")
    blocks = [code.value for code in history.code]
    assert "make it darker" in blocks  # what the user wrote
    assert second.prompt in blocks  # what the backend got
    assert second.prompt != "make it darker"
    assert "**Derived from:** #1" in [unescape(m.value) for m in history.markdown]

    (chart,) = history.get("graphviz_chart")
    dot = chart.proto.spec
    assert f"img{first.id} -> img{second.id}" in dot
    highlighted = next(line for line in dot.splitlines() if line.strip().startswith(f"img{second.id} ["))
    assert "fillcolor" in highlighted and "penwidth" in highlighted
    assert "Compared with its parent" in [s.value for s in history.subheader]

    click(history, f"atelier.h.node.{first.id}")  # walk the tree to the parent
    assert unescape(history.subheader[0].value).startswith("#1 · ")
    assert "Compared with its parent" not in [s.value for s in history.subheader]
    click(history, "atelier.h.back")
    assert len(gallery_numbers(history)) == 2  # the search is kept


def test_continue_from_here_opens_the_chat_on_that_image(history: AppTest, stored: Repository) -> None:
    fox_id = min(c.id for c in stored.list_conversations())
    second = stored.get_image_by_number(fox_id, 2)
    click(history, f"atelier.h.detail.{second.id}")
    click(history, "atelier.h.continue")

    assert history.session_state[Keys.CONVERSATION] == fox_id
    assert unescape(history.title[0].value) == FOX  # the chat page, on the fox conversation
    box = edit_box(history)
    assert box.value == "#2: "
    # AppTest keeps requesting the page named by its own last switch_page (history) on every
    # later run, where a browser asks for the page it is on; say so, as the browser would
    history.switch_page(CHAT_PAGE)
    box.set_value("#2: add a full moon")
    history.button(key="FormSubmitter:atelier.edit_form-Send edit").click().run()
    assert_ok(history)
    newest = stored.conversation_images(fox_id)[-1]
    assert (newest.number, newest.parent_id) == (3, second.id)


def test_lineage_button_in_the_chat_opens_the_detail(app: AppTest, stored: Repository) -> None:
    send(app, FOX)
    send(app, "make it darker")
    second = stored.list_images()[0]
    click(app, f"atelier.lineage.{second.id}")
    assert [t.value for t in app.title] == ["History"]
    assert unescape(app.subheader[0].value).startswith("#2 · ")
    assert app.get("graphviz_chart")
    app.switch_page(CHAT_PAGE).run()
    assert_ok(app)
    assert "#1 · generate" in captions(app)


def test_an_empty_history_says_how_to_start(app: AppTest) -> None:
    app.switch_page(HISTORY_PAGE).run()
    assert_ok(app)
    assert any("No images yet" in info.value for info in app.info)


def _image(id_: int, number: int, parent_id: int | None, instruction: str) -> Image:
    return Image(
        id=id_,
        conversation_id=1,
        number=number,
        parent_id=parent_id,
        operation="edit",
        instruction=instruction,
        prompt="",
        backend="offline",
        model="m",
        width=8,
        height=8,
        sha256="0" * 64,
    )


def test_lineage_labels_cannot_break_out_of_the_dot_source() -> None:
    hostile = '"];\nevil [label="pwned"]; "\\'
    nodes = [LineageNode(_image(1, 1, None, "a fox"), 0), LineageNode(_image(2, 2, 1, hostile), 1)]
    dot = lineage_dot(nodes, highlight_id=2)
    body = [line.strip() for line in dot.splitlines()[1:-1]]
    # one statement per node and one edge: the hostile label stayed inside its quotes
    assert [line.split(" ", 1)[0] for line in body if line.startswith("img")] == ["img1", "img2", "img1"]
    assert "evil ->" not in dot and "\nevil" not in dot
    assert '\\"pwned\\"' in dot and "\\\\" in dot


def test_a_lineage_with_many_variations_is_drawn_left_to_right_so_labels_stay_readable() -> None:
    root = LineageNode(_image(1, 1, None, "a fox"), 0)
    few = [root, *(LineageNode(_image(n, n, 1, "a variation, " * 5), 1) for n in (2, 3))]
    many = [root, *(LineageNode(_image(n, n, 1, "a variation, " * 5), 1) for n in range(2, 10))]
    assert "rankdir=TB;" in lineage_dot(few) and "rankdir=LR;" in lineage_dot(many)
    # and each box (the root and its eight) is short enough that a column of them still reads
    labels = re.findall(r'label="#\d+ edit\\n([^"]*)"', lineage_dot(many))
    assert len(labels) == 9 and all(len(label) <= 28 for label in labels), labels


MISSING = "The file of this image is missing"


def test_detail_with_a_missing_file_warns_and_keeps_drawing(history: AppTest, stored: Repository) -> None:
    fox_id = min(c.id for c in stored.list_conversations())
    first, second = stored.conversation_images(fox_id)
    stored.image_path(first).unlink()

    history.run()  # the gallery (its thumbnails may still come from the cache)
    assert_ok(history)
    assert len(gallery_numbers(history)) == 3

    click(history, f"atelier.h.detail.{second.id}")  # its parent's file is the missing one
    assert "Compared with its parent" in [s.value for s in history.subheader]
    assert len([w for w in history.warning if w.value.startswith(MISSING)]) == 1
    assert len(history.image) == 2  # #2 itself, beside its details and in the comparison
    assert history.get("graphviz_chart")

    click(history, f"atelier.h.node.{first.id}")  # the image whose file is gone
    assert unescape(history.subheader[0].value).startswith("#1 · ")
    assert len([w for w in history.warning if w.value.startswith(MISSING)]) == 1
    assert not history.image
    assert not [b for b in history.get("download_button") if b.proto.label != "Export conversation (zip)"]
    assert history.get("graphviz_chart")
    click(history, "atelier.h.back")


def test_conversations_past_the_first_thousand_can_be_chosen_and_are_named(
    app: AppTest, stored: Repository
) -> None:
    """An old conversation behind 1,200 newer ones: its gallery cell names it, and the
    conversation filter finds it by its title or by what was said in it."""
    lisbon = stored.create_conversation("Lisbon sketches").id
    add_generated(stored, lisbon, "a yellow tram on a steep hill", index=1)  # says it in its reply
    with stored.db.write() as session:  # newer ones, in one transaction (fast)
        session.add_all(Conversation(title=f"Trip {n:04d}") for n in range(1, 1201))
    newest = stored.create_conversation("Fox studies").id
    add_generated(stored, newest, "a red fox in the snow", index=2)
    assert stored.list_conversations(limit=2000)[-1].id == lisbon  # the oldest of 1,202

    app.switch_page(HISTORY_PAGE).run()
    assert_ok(app)
    assert gallery_numbers(app) == ["#1 · generate · offline", "#1 · generate · offline"]
    assert [c for c in captions(app) if c.startswith("in ")] == ["in Fox studies", "in Lisbon sketches"]
    offered = app.selectbox(key=CONVERSATION_KEY).options
    assert len(offered) == CONVERSATION_CHOICES + 1 and f"Lisbon sketches ({lisbon})" not in offered

    app.text_input(key=CONVERSATION_QUERY_KEY).set_value("trip 0001").run()  # a search, then none:
    app.text_input(key=CONVERSATION_QUERY_KEY).set_value("").run()
    assert app.selectbox(key=CONVERSATION_KEY).index == 0  # still "All conversations", not blank
    app.text_input(key=CONVERSATION_QUERY_KEY).set_value("TRAM hill").run()  # words of its messages
    assert app.selectbox(key=CONVERSATION_KEY).options == ["All conversations", f"Lisbon sketches ({lisbon})"]
    app.selectbox(key=CONVERSATION_KEY).set_value(lisbon).run()
    assert_ok(app)
    assert [c for c in captions(app) if c.startswith("in ")] == ["in Lisbon sketches"]

    app.text_input(key=CONVERSATION_QUERY_KEY).set_value("trip 0007").run()  # another search…
    assert app.selectbox(key=CONVERSATION_KEY).value == lisbon  # …keeps the choice, still offered
    assert app.selectbox(key=CONVERSATION_KEY).options[1] == f"Lisbon sketches ({lisbon})"
    assert [c for c in captions(app) if c.startswith("in ")] == ["in Lisbon sketches"]
    app.text_input(key=CONVERSATION_QUERY_KEY).set_value("zebra").run()
    assert "No conversation matches." in captions(app)

    (image,) = stored.conversation_images(lisbon)
    click(app, f"atelier.h.detail.{image.id}")
    assert unescape(app.subheader[0].value) == "#1 · Lisbon sketches"
    click(app, "atelier.h.back")
    assert app.selectbox(key=CONVERSATION_KEY).value == lisbon  # the filter survived the detail view

    stored.delete_conversation(lisbon)
    app.run()
    assert_ok(app)
    assert app.selectbox(key=CONVERSATION_KEY).index == 0  # gone: back to every conversation
    assert gallery_numbers(app) == ["#1 · generate · offline"]


def test_the_lineage_open_buttons_come_in_number_order(app: AppTest, stored: Repository) -> None:
    """#2 and #4 are edits of #1, #3 an edit of #2: the tree lists #2 and #4 (one step from #1)
    before #3 (two steps), but the buttons under it are in the order the images were made."""
    send(app, FOX)
    send(app, "make it darker")
    send(app, "make it snowier")
    send(app, "#1 but at sunset")
    (conversation,) = stored.list_conversations()
    first, second, third, fourth = stored.conversation_images(conversation.id)
    assert third.parent_id == second.id and fourth.parent_id == first.id
    app.switch_page(HISTORY_PAGE).run()
    click(app, f"atelier.h.detail.{first.id}")
    opened = [b.label for b in app.button if b.key and b.key.startswith("atelier.h.node.")]
    assert opened == ["Open #2", "Open #3", "Open #4"]
