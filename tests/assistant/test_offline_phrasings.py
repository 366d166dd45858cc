"""Messages from a QA pass, end to end: `Assistant.respond` with the offline planner and renderer.

The planner tests check plans; these check what a user would find afterwards in their history:
the rows that were (or were not) stored, their sizes, seeds, parameters and prompts.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from assistant.core import Assistant
from assistant.events import Event, ImageReady, PlanMade, Reply
from assistant.offline_planner import SURPRISE_SUBJECTS
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


def test_undo_makes_the_earlier_image_the_one_the_next_change_edits(studio: tuple[Assistant, int]) -> None:
    """#1 cabin → #2 snowier; "undo" keeps #2 but the next edit starts from #1, not #2."""
    assistant, conversation_id = studio
    _, events = say(assistant, conversation_id, "undo")
    assert "Back to #1" in reply_text(events) and "#1 is still there" in reply_text(events)
    assert sorted(images(assistant, conversation_id)) == [1, 2]
    _, events = say(assistant, conversation_id, "what seed is it?")  # a question keeps #1 current
    assert "#1" in reply_text(events)
    _, events = say(assistant, conversation_id, "add a red door")
    stored = images(assistant, conversation_id)
    assert new_images(events) == [3] and stored[3].parent_id == stored[1].id
    _, events = say(assistant, conversation_id, "make it brighter")  # #3 is now the newest and current
    assert new_images(events) == [4] and images(assistant, conversation_id)[4].parent_id == stored[3].id


def test_going_back_to_the_first_one_moves_the_working_image(studio: tuple[Assistant, int]) -> None:
    assistant, conversation_id = studio
    say(assistant, conversation_id, "make it brighter")  # #3, from #2
    _, events = say(assistant, conversation_id, "go back to the first one")
    assert "Back to #1" in reply_text(events)
    _, events = say(assistant, conversation_id, "flip it horizontally")
    stored = images(assistant, conversation_id)
    assert new_images(events) == [4] and stored[4].parent_id == stored[1].id


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


def test_make_it_square_redraws_the_image_square_with_its_seed(tmp_path: Path) -> None:
    """ "make it square" is a shape, as "make it 16:9" is: the picture redrawn, nothing cut off."""
    assistant = open_assistant(tmp_path)
    conversation_id, _ = say(assistant, None, "a lighthouse on a cliff at dusk, 16:9")
    _, events = say(assistant, conversation_id, "make it square")
    assert new_images(events) == [2]
    rows = images(assistant, conversation_id)
    wide, square = rows[1], rows[2]
    assert wide.width > wide.height and square.width == square.height
    assert square.operation != "transform" and square.params.get("regenerated_from") == wide.id
    assert square.seed == wide.seed and square.prompt == wide.prompt
    assert "1:1" in reply_text(events)


def test_make_number_square_redraws_the_image_named(tmp_path: Path) -> None:
    assistant = open_assistant(tmp_path)
    conversation_id, _ = say(assistant, None, "a lighthouse on a cliff at dusk, 16:9")
    say(assistant, conversation_id, "a red fox on a mossy rock")
    _, events = say(assistant, conversation_id, "make #1 square")
    assert new_images(events) == [3]
    rows = images(assistant, conversation_id)
    assert rows[3].width == rows[3].height and rows[3].params.get("regenerated_from") == rows[1].id
    assert rows[3].prompt == rows[1].prompt and rows[3].seed == rows[1].seed


def test_crop_to_square_still_crops(tmp_path: Path) -> None:
    assistant = open_assistant(tmp_path)
    conversation_id, _ = say(assistant, None, "a lighthouse on a cliff at dusk, 16:9")
    _, events = say(assistant, conversation_id, "crop it to square")
    assert new_images(events) == [2]
    row = images(assistant, conversation_id)[2]
    assert (
        row.operation == "transform"
        and row.width == row.height == images(assistant, conversation_id)[1].height
    )


def test_make_it_square_of_a_crop_crops_and_says_so(tmp_path: Path) -> None:
    """A crop has no prompt of its own to redraw: a new shape is another crop, and the reply says it."""
    assistant = open_assistant(tmp_path)
    conversation_id, _ = say(assistant, None, "a lighthouse on a cliff at dusk")
    say(assistant, conversation_id, "crop it to 16:9")
    _, events = say(assistant, conversation_id, "make it square")
    assert new_images(events) == [3]
    row = images(assistant, conversation_id)[3]
    assert row.operation == "transform" and row.width == row.height
    assert "cropped it to 1:1" in reply_text(events) and "make #1 1:1" in reply_text(events)


def test_a_square_image_made_square_is_left_alone(tmp_path: Path) -> None:
    assistant = open_assistant(tmp_path)
    conversation_id, _ = say(assistant, None, "a lighthouse on a cliff at dusk")
    _, events = say(assistant, conversation_id, "make it square")
    assert new_images(events) == [] and "already" in reply_text(events)


@pytest.mark.parametrize(
    "text", ["make the fox bigger", "make the fox more prominent", "the fox is too small"]
)
def test_make_the_fox_bigger_is_a_clean_edit(tmp_path: Path, text: str) -> None:
    assistant = open_assistant(tmp_path)
    conversation_id, _ = say(assistant, None, "a red fox on a mossy rock")
    say(assistant, conversation_id, "a lighthouse at dawn")
    _, events = say(assistant, conversation_id, text)
    assert new_images(events) == [3]
    rows = images(assistant, conversation_id)
    assert rows[3].operation == "edit" and rows[3].parent_id == rows[1].id
    assert rows[3].prompt.startswith("a large red fox on a mossy rock, close-up of the fox")
    assert not re.search(r"bigger|more prominent|too small|\bmake\b", rows[3].prompt)


def test_make_the_fox_smaller_after_bigger_goes_back(tmp_path: Path) -> None:
    assistant = open_assistant(tmp_path)
    conversation_id, _ = say(assistant, None, "a red fox on a mossy rock")
    say(assistant, conversation_id, "make the fox bigger")
    say(assistant, conversation_id, "make the fox smaller")
    rows = images(assistant, conversation_id)
    assert rows[3].prompt == rows[1].prompt


@pytest.mark.parametrize("text", ["I like it more blue", "I'd like it more blue", "I want it bluer"])
def test_a_wish_about_the_last_image_edits_it(tmp_path: Path, text: str) -> None:
    assistant = open_assistant(tmp_path)
    conversation_id, _ = say(assistant, None, "a red fox on a mossy rock")
    _, events = say(assistant, conversation_id, text)
    assert new_images(events) == [2]
    rows = images(assistant, conversation_id)
    assert rows[2].operation == "edit" and rows[2].parent_id == rows[1].id and rows[2].seed == rows[1].seed
    assert rows[2].prompt.startswith("a red fox on a mossy rock")
    assert "dominant blue tones" in rows[2].prompt
    assert not re.search(r"\b(?:like|want|bluer|more blue)\b", rows[2].prompt, flags=re.IGNORECASE)


def test_i_like_it_is_praise_not_a_picture(tmp_path: Path) -> None:
    assistant = open_assistant(tmp_path)
    conversation_id, _ = say(assistant, None, "a red fox on a mossy rock")
    _, events = say(assistant, conversation_id, "I like it")
    assert new_images(events) == [] and "Glad you like it" in reply_text(events)


@pytest.mark.parametrize(
    "text", ["surprise me", "anything", "dealer's choice", "random picture", "something random"]
)
def test_surprise_me_picks_a_subject_and_says_which(tmp_path: Path, text: str) -> None:
    assistant = open_assistant(tmp_path)
    conversation_id, events = say(assistant, None, text)
    assert new_images(events) == [1]
    row = images(assistant, conversation_id)[1]
    subject = next(s for s in SURPRISE_SUBJECTS if row.prompt.startswith(s))
    assert f"I picked “{subject}”" in reply_text(events)
    assert not re.search(r"surprise|anything|dealer|random|choice", row.prompt, flags=re.IGNORECASE)
    # the record holds the choice: asking about the image gives the subject back
    _, events = say(assistant, conversation_id, "what prompt made #1?")
    assert subject in reply_text(events)


def test_surprise_me_is_reproducible_and_changes_each_time(tmp_path: Path) -> None:
    first = open_assistant(tmp_path / "a")
    second = open_assistant(tmp_path / "b")
    one, _ = say(first, None, "surprise me")
    two, _ = say(second, None, "surprise me")
    assert images(first, one)[1].prompt == images(second, two)[1].prompt
    say(first, one, "surprise me")
    rows = images(first, one)
    assert rows[2].prompt != rows[1].prompt


def test_steps_and_guidance_carry_over_to_edits_variations_and_re_rolls(tmp_path: Path) -> None:
    """An A1111 user sets "40 steps, cfg 9" once; every image made from that one keeps them
    (through a flip, which has none of its own) until a message sets others."""
    assistant = open_assistant(tmp_path)
    conversation_id, _ = say(assistant, None, "a fox in a field, 40 steps, cfg 9")

    def made_with(number: int) -> tuple[int, float]:
        image = images(assistant, conversation_id)[number]
        assert image.generation_id is not None
        params = assistant.repo.generation(image.generation_id)[0].params
        return params["steps"], params["guidance"]

    for text, number in (
        ("make it snowier", 2),
        ("a variation of #1", 3),
        ("try again", 4),
        ("flip it horizontally", 5),
        ("make it brighter", 6),  # an edit of the flip: the steps come from #1 through it
    ):
        _, events = say(assistant, conversation_id, text)
        assert new_images(events) == [number], reply_text(events)
        if number != 5:
            assert made_with(number) == (40, 9.0), text
    _, events = say(assistant, conversation_id, "make it darker, 30 steps")
    assert made_with(7) == (30, 9.0)
    fresh, _ = say(assistant, None, "a cat on a sofa")
    image = images(assistant, fresh)[1]
    assert image.generation_id is not None
    fresh_params = assistant.repo.generation(image.generation_id)[0].params
    settings = assistant.settings  # a new picture gets the settings' values again
    assert (
        (fresh_params["steps"], fresh_params["guidance"]) == (settings.steps, settings.guidance) != (40, 9.0)
    )


def test_wider_and_taller_redraw_at_the_next_shape_as_a_child_of_the_image(
    studio: tuple[Assistant, int],
) -> None:
    """#1 cabin (512²) → #2 snowier. "make #1 wider" is #1 at 4:3 with its prompt and seed;
    "make it taller" of the edit #2 is its prompt drawn at 3:4; both stay in the lineage."""
    assistant, conversation_id = studio
    _, events = say(assistant, conversation_id, "make #1 a bit wider")
    stored = images(assistant, conversation_id)
    wider = stored[3]
    assert new_images(events) == [3] and wider.width > wider.height
    assert (wider.prompt, wider.seed, wider.parent_id) == (stored[1].prompt, stored[1].seed, stored[1].id)
    assert "wider" not in wider.prompt
    _, events = say(assistant, conversation_id, "same but wider")  # wider again than #3
    wider_still = images(assistant, conversation_id)[4]
    assert wider_still.width / wider_still.height > wider.width / wider.height
    assert wider_still.parent_id == wider.id
    _, events = say(assistant, conversation_id, "#2 taller please")
    taller = images(assistant, conversation_id)[5]
    assert taller.height > taller.width and taller.parent_id == stored[2].id
    assert taller.prompt == stored[2].prompt and "taller" not in taller.prompt
    _, events = say(assistant, conversation_id, "make #5 square")
    square = images(assistant, conversation_id)[6]
    assert square.width == square.height and square.parent_id == taller.id


def test_a_wider_river_is_a_picture_not_a_shape(studio: tuple[Assistant, int]) -> None:
    assistant, conversation_id = studio
    _, events = say(assistant, conversation_id, "make the river wider")
    made = images(assistant, conversation_id)[new_images(events)[0]]
    assert (made.width, made.height) == (images(assistant, conversation_id)[2].width,) * 2


def test_an_edit_that_changed_no_pixel_says_so(tmp_path: Path) -> None:
    """The sketch renderer cannot take a moon away; "Edited: 1 image." alone would be a lie."""
    assistant = open_assistant(tmp_path)
    conversation_id, _ = say(assistant, None, "a snowy cabin in a forest at night with a moon")
    _, events = say(assistant, conversation_id, "remove the moon")
    stored = images(assistant, conversation_id)
    same = np.array_equal(
        np.asarray(assistant.repo.load_image(stored[1]).convert("RGB")),
        np.asarray(assistant.repo.load_image(stored[2]).convert("RGB")),
    )
    assert same  # the premise: this renderer draws no change for it
    assert "“remove the moon” changed nothing: the result is pixel for pixel #1" in reply_text(events)
    assert reply_text(events).startswith(
        "No visible change to #1: 1 image stored"
    ) and "Edited" not in reply_text(events)
    _, events = say(assistant, conversation_id, "make it sunset")  # a change it can draw
    assert "changed nothing" not in reply_text(events)


def test_a_shape_word_beside_exact_pixels_is_said_and_stored_as_those_pixels(tmp_path: Path) -> None:
    assistant = open_assistant(tmp_path)
    conversation_id, events = say(assistant, None, "a lighthouse on a cliff, portrait 512x768")
    first = images(assistant, conversation_id)[1]
    assert (first.width, first.height) == (512, 768) and "portrait" not in first.prompt
    _, events = say(assistant, conversation_id, "landscape 768x512")
    again = images(assistant, conversation_id)[2]
    assert (again.width, again.height) == (768, 512)
    assert "768x512" in reply_text(events) and "3:2" not in reply_text(events)


def test_questions_about_the_images_are_answered_from_the_record(tmp_path: Path) -> None:
    assistant = open_assistant(tmp_path)
    conversation_id, _ = say(assistant, None, "a red fox in a snowy forest")
    say(assistant, conversation_id, "a cabin by a lake at dawn")
    _, events = say(assistant, conversation_id, "which one was at dawn?")
    assert new_images(events) == [] and "#2" in reply_text(events) and "#1" not in reply_text(events)
    _, events = say(assistant, conversation_id, "which one is snowy?")
    assert "#1" in reply_text(events) and "#2" not in reply_text(events)
    _, events = say(assistant, conversation_id, "did #2 use the same seed as #1?")
    stored = images(assistant, conversation_id)
    answer = reply_text(events)
    assert (
        new_images(events) == []
        and f"Seed: {stored[1].seed}" in answer
        and f"Seed: {stored[2].seed}" in answer
    )
    _, events = say(assistant, conversation_id, "which image was the biggest?")
    size = f"{stored[1].width}×{stored[1].height}"
    assert new_images(events) == [] and f"#1 generate, {size}" in reply_text(events)
    assert sorted(images(assistant, conversation_id)) == [1, 2]


def test_undo_after_a_re_run_goes_back_to_the_image_re_run(tmp_path: Path) -> None:
    """#3 is #2 again at 40 steps; #2 is a variation of #1, so #3's parent is #1, but the picture
    the user saw before was #2."""
    assistant = open_assistant(tmp_path)
    conversation_id, _ = say(assistant, None, "a lake at sunset")
    say(assistant, conversation_id, "a variation of #1")
    _, events = say(assistant, conversation_id, "40 steps, cfg 9")
    assert (
        new_images(events) == [3]
        and images(assistant, conversation_id)[3].parent_id == images(assistant, conversation_id)[1].id
    )
    _, events = say(assistant, conversation_id, "undo")
    assert reply_text(events).startswith("Back to #2")
    _, events = say(assistant, conversation_id, "undo")
    assert reply_text(events).startswith("Back to #1")


def test_same_seed_but_a_new_subject_keeps_the_scene_and_the_settings(tmp_path: Path) -> None:
    """An AUTOMATIC1111 habit: keep the seed and the settings, change the subject."""
    assistant = open_assistant(tmp_path)
    conversation_id, _ = say(assistant, None, "a red fox in a meadow, 40 steps, cfg 9, seed 5")
    _, events = say(assistant, conversation_id, "same seed but a wolf")
    assert new_images(events) == [2]
    stored = images(assistant, conversation_id)
    wolf = stored[2]
    assert wolf.prompt.startswith("a wolf in a meadow") and "fox" not in wolf.prompt
    assert (wolf.seed, wolf.parent_id, (wolf.params or {}).get("steps")) == (5, stored[1].id, 40)
    say(assistant, conversation_id, "same seed as #1 but daytime")
    day = images(assistant, conversation_id)[3]
    assert day.operation == "edit" and day.prompt.startswith("a red fox in a meadow") and day.seed == 5
    assert "daytime" not in day.prompt.split(",")[1:]  # read as a time of day, not added as words


def test_a_character_introduced_by_name_keeps_its_description_and_look(tmp_path: Path) -> None:
    assistant = open_assistant(tmp_path)
    conversation_id, _ = say(
        assistant, None, "a red-haired girl named Mira with a green scarf and a fox companion, anime style"
    )
    _, events = say(assistant, conversation_id, "now show Mira in a snowy village")
    scene = images(assistant, conversation_id)[2]
    assert scene.prompt.startswith(
        "Mira, a red-haired girl with a green scarf and a fox companion, in a snowy village"
    )
    assert (scene.params or {}).get("style") == "anime" and "as introduced in #1" in reply_text(events)
    say(assistant, conversation_id, "a castle on a hill")  # no name: nothing borrowed
    assert images(assistant, conversation_id)[3].prompt.startswith("a castle on a hill,")
