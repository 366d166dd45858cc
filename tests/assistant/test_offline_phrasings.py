"""Messages from a QA pass, end to end: `Assistant.respond` with the offline planner and renderer.

The planner tests check plans; these check what a user would find afterwards in their history:
the rows that were (or were not) stored, their sizes, seeds, parameters and prompts.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from assistant.core import Assistant
from assistant.events import Event, ImageReady, PlanMade, Reply
from storage.models import Image
from tests.assistant.test_assistant_turns import open_assistant


def say(assistant: Assistant, conversation_id: int | None, text: str) -> tuple[int, list[Event]]:
    events = list(assistant.respond(conversation_id, text))
    return events[0].conversation_id, events


def images(assistant: Assistant, conversation_id: int) -> dict[int, Image]:
    return {image.number: image for image in assistant.repo.conversation_images(conversation_id)}


def new_images(events: list[Event]) -> list[int]:
    return [e.number for e in events if isinstance(e, ImageReady)]


def reply_text(events: list[Event]) -> str:
    reply = events[-1]
    assert isinstance(reply, Reply), events
    return reply.text


@pytest.fixture
def studio(tmp_path: Path) -> tuple[Assistant, int]:
    """A conversation with #1 a generated cabin and #2 an edit of it."""
    assistant = open_assistant(tmp_path)
    conversation_id, _ = say(assistant, None, "a cozy cabin at night")
    say(assistant, conversation_id, "make it snowier")
    assert sorted(images(assistant, conversation_id)) == [1, 2]
    return assistant, conversation_id


@pytest.mark.parametrize(
    "text",
    [
        "thanks",
        "thank you so much",
        "ok",
        "yes",
        "lol",
        "hmm",
        "bye",
        "test",
        "good morning",
        "who are you?",
        "can you make videos?",
        "I don't like it",
        "undo",
        "how did you make #2?",
        "what's in #2?",
        "show me #2",
        "tell me about #1",
    ],
)
def test_chat_and_questions_store_no_image(studio: tuple[Assistant, int], text: str) -> None:
    assistant, conversation_id = studio
    _, events = say(assistant, conversation_id, text)
    assert new_images(events) == []
    assert sorted(images(assistant, conversation_id)) == [1, 2]
    assert reply_text(events)


def test_questions_are_answered_from_the_record(studio: tuple[Assistant, int]) -> None:
    assistant, conversation_id = studio
    _, events = say(assistant, conversation_id, "how did you make #2?")
    assert "How #2 came about" in reply_text(events) and "make it snowier" in reply_text(events)
    _, events = say(assistant, conversation_id, "what's in #2?")
    assert "heavy snowfall" in reply_text(events)


def test_undo_points_at_the_image_before_and_deletes_nothing(studio: tuple[Assistant, int]) -> None:
    assistant, conversation_id = studio
    _, events = say(assistant, conversation_id, "undo")
    assert "Nothing is deleted: #1 is still there" in reply_text(events)
    assert sorted(images(assistant, conversation_id)) == [1, 2]


def test_use_40_steps_re_runs_the_last_image_with_them(studio: tuple[Assistant, int]) -> None:
    assistant, conversation_id = studio
    _, events = say(assistant, conversation_id, "#1 with 40 steps")
    assert new_images(events) == [3]
    rows = images(assistant, conversation_id)
    assert rows[3].params["steps"] == 40
    assert rows[3].seed == rows[1].seed and rows[3].prompt == rows[1].prompt
    assert "steps" not in rows[3].prompt


def test_a_new_image_with_settings_stores_them_and_not_the_words(tmp_path: Path) -> None:
    assistant = open_assistant(tmp_path)
    conversation_id, events = say(assistant, None, "a cat on a sofa, 16:9, 30 steps")
    plan = events[0]
    assert isinstance(plan, PlanMade) and plan.params["steps"] == 30
    row = images(assistant, conversation_id)[1]
    assert row.width > row.height
    assert row.params["steps"] == 30
    assert "16:9" not in row.prompt and "steps" not in row.prompt and row.prompt.startswith("a cat on a sofa")


def test_make_it_16_9_redraws_the_image_wider_with_its_seed(tmp_path: Path) -> None:
    assistant = open_assistant(tmp_path)
    conversation_id, _ = say(assistant, None, "a lighthouse on a cliff at dusk")
    _, events = say(assistant, conversation_id, "make it 16:9")
    assert new_images(events) == [2]
    first, wide = images(assistant, conversation_id)[1], images(assistant, conversation_id)[2]
    assert wide.width > wide.height and first.width == first.height
    assert wide.seed == first.seed and wide.prompt == first.prompt
    assert wide.params.get("regenerated_from") == first.id


def test_replay_makes_the_same_picture_again(studio: tuple[Assistant, int]) -> None:
    assistant, conversation_id = studio
    _, events = say(assistant, conversation_id, "replay #1")
    assert new_images(events) == [3]
    rows = images(assistant, conversation_id)
    assert rows[3].seed == rows[1].seed
    assert assistant.repo.load_image(rows[3]).tobytes() == assistant.repo.load_image(rows[1]).tobytes()
    _, events = say(assistant, conversation_id, "how did #3 come about?")
    assert "a re-run of #1 with the same seed" in reply_text(events)


def test_crop_to_the_left_half_keeps_half_the_width(studio: tuple[Assistant, int]) -> None:
    assistant, conversation_id = studio
    _, events = say(assistant, conversation_id, "crop it to the left half")
    assert new_images(events) == [3]
    rows = images(assistant, conversation_id)
    assert (rows[3].width, rows[3].height) == (rows[2].width // 2, rows[2].height)


def test_that_is_too_dark_brightens_it(studio: tuple[Assistant, int]) -> None:
    assistant, conversation_id = studio
    _, events = say(assistant, conversation_id, "that's too dark")
    assert new_images(events) == [3]
    row = images(assistant, conversation_id)[3]
    assert row.operation == "edit" and "bright" in row.prompt and "too dark" not in row.prompt


def test_do_the_same_to_another_image(tmp_path: Path) -> None:
    assistant = open_assistant(tmp_path)
    conversation_id, _ = say(assistant, None, "a red fox on a rock")
    say(assistant, conversation_id, "a lighthouse at dawn")
    say(assistant, conversation_id, "make it snowier")
    _, events = say(assistant, conversation_id, "do the same to #1")
    assert new_images(events) == [4]
    row = images(assistant, conversation_id)[4]
    assert row.parent_id == images(assistant, conversation_id)[1].id
    assert row.prompt.startswith("a red fox on a rock") and "snowfall" in row.prompt
    assert "same" not in row.prompt


def test_less_red_puts_no_red_in_the_prompt(studio: tuple[Assistant, int]) -> None:
    assistant, conversation_id = studio
    _, events = say(assistant, conversation_id, "less red")
    assert new_images(events) == [3]
    assert "red" not in images(assistant, conversation_id)[3].prompt


def test_another_one_after_three_variations_makes_one(studio: tuple[Assistant, int]) -> None:
    assistant, conversation_id = studio
    _, events = say(assistant, conversation_id, "three more like #1")
    assert new_images(events) == [3, 4, 5]
    _, events = say(assistant, conversation_id, "another one")
    assert new_images(events) == [6]
