"""Reference resolution: every form users type, and never a guess or an invented number."""

from __future__ import annotations

import pytest

from assistant.plan import ImageInfo
from assistant.references import (
    NO_IMAGES_QUESTION,
    NO_UPLOAD_QUESTION,
    RefStatus,
    last_batch,
    prompt_mentions,
    resolve_references,
    stem,
)


def _image(number: int, prompt: str, operation: str = "generate", parent: int | None = None) -> ImageInfo:
    return ImageInfo(number, 100 + number, operation, parent, prompt, None, 512, 512, number)


#: #1 cabin, #2 edit of #1, #3 fox, #4 variation of #3, #5 lighthouse
IMAGES = (
    _image(1, "a cozy cabin in the woods at night, soft natural lighting"),
    _image(2, "a cozy cabin in the woods at night, heavy snowfall", "edit", 1),
    _image(3, "a red fox sitting on a mossy rock"),
    _image(4, "a red fox sitting on a mossy rock", "variation", 3),
    _image(5, "a lighthouse on a cliff"),
)


@pytest.mark.parametrize(
    ("text", "numbers"),
    [
        ("#3 but at sunset", (3,)),
        ("# 3 at sunset", (3,)),
        ("image 3 at sunset", (3,)),
        ("picture 2, add a moon", (2,)),
        ("pic 4", (4,)),
        ("photo 1 please", (1,)),
        ("number 3 at sunset", (3,)),
        ("image three", (3,)),
        ("images 2 and 3", (2, 3)),
        ("#2 and #4", (2, 4)),
        ("the last one", (5,)),
        ("the latest", (5,)),
        ("the most recent image", (5,)),
        ("the newest picture", (5,)),
        ("the previous one", (4,)),
        ("the one before", (4,)),
        ("the one before that", (4,)),
        ("the one before #3", (2,)),
        ("the image before image 2", (1,)),
        ("the second to last", (4,)),
        ("the first image", (1,)),
        ("the second one but at sunset", (2,)),
        ("the third", (3,)),
        ("the 2nd picture", (2,)),
        ("the fifth one", (5,)),
        ("the first two", (1, 2)),
        ("the last three", (3, 4, 5)),
        ("both", (4, 5)),
        ("both of them", (4, 5)),
        ("all of them", (1, 2, 3, 4, 5)),
        ("every image", (1, 2, 3, 4, 5)),
        ("the lighthouse one", (5,)),
        ("the one with the lighthouse", (5,)),
        ("the snowy one", (2,)),
        ("the original", (5,)),
    ],
)
def test_reference_forms(text: str, numbers: tuple[int, ...]) -> None:
    result = resolve_references(text, IMAGES)
    assert result.status is RefStatus.RESOLVED, result.question
    assert result.numbers == numbers
    assert result.explicit


@pytest.mark.parametrize("text", ["it", "make it snowier", "this one", "that", "that picture", "this"])
def test_pronouns_mean_the_last_image_but_are_not_explicit(text: str) -> None:
    result = resolve_references(text, IMAGES)
    assert result.numbers == (5,)
    assert not result.explicit


def test_an_explicit_reference_wins_over_a_pronoun() -> None:
    result = resolve_references("#2 but make it blue", IMAGES)
    assert result.numbers == (2,)
    assert result.text_without(keep_pronouns=True) == "but make it blue"
    assert result.remainder == "but make blue"


def test_the_original_follows_parents_to_the_root() -> None:
    images = (*IMAGES, _image(6, "x", "edit", 4), _image(7, "y", "upscale", 6))
    assert resolve_references("the original", images).numbers == (3,)


def test_them_means_the_last_batch() -> None:
    images = (*IMAGES, _image(6, "a boat", "generate"), _image(7, "a boat"), _image(8, "a boat"))
    assert last_batch(images) == (6, 7, 8)
    assert resolve_references("make them blue", images).numbers == (6, 7, 8)


def test_missing_number_asks_and_names_what_exists() -> None:
    result = resolve_references("#9 but at sunset", IMAGES)
    assert result.status is RefStatus.MISSING
    assert result.numbers == ()
    assert result.question is not None
    assert "#9" in result.question and "#1" in result.question and "#5" in result.question


def test_missing_ordinal_and_previous() -> None:
    assert resolve_references("the seventh one", IMAGES).status is RefStatus.MISSING
    one = IMAGES[:1]
    result = resolve_references("the previous one", one)
    assert result.status is RefStatus.MISSING
    assert "only one image" in (result.question or "")
    assert resolve_references("both", one).status is RefStatus.MISSING
    assert resolve_references("the one before #1", IMAGES).status is RefStatus.MISSING


def test_ambiguous_description_lists_candidates_never_guesses() -> None:
    result = resolve_references("the fox one", IMAGES)
    assert result.status is RefStatus.AMBIGUOUS
    assert result.numbers == ()
    assert result.candidates == (3, 4)
    assert "#3" in (result.question or "") and "#4" in (result.question or "")


def test_description_without_a_match_is_missing() -> None:
    result = resolve_references("the dragon one", IMAGES)
    assert result.status is RefStatus.MISSING
    assert "dragon" in (result.question or "")


def test_no_mention_is_none_or_the_last_image_by_request() -> None:
    assert resolve_references("add a moon", IMAGES).status is RefStatus.NONE
    result = resolve_references("add a moon", IMAGES, default_to_last=True)
    assert result.status is RefStatus.RESOLVED and result.numbers == (5,) and result.defaulted


def test_no_images_asks_for_a_description() -> None:
    for text, default in (("make it snowier", True), ("#2 at sunset", False), ("the last one", False)):
        result = resolve_references(text, (), default_to_last=default)
        assert result.status is RefStatus.NO_IMAGES
        assert result.question == NO_IMAGES_QUESTION


@pytest.mark.parametrize(
    "text",
    [
        "the third floor of a tower",
        "a second moon in the sky",
        "4 images of a fox",
        "a cozy cabin at last",
    ],
)
def test_plain_descriptions_are_not_references(text: str) -> None:
    assert resolve_references(text, IMAGES).status is RefStatus.NONE


def test_remainder_drops_the_mentions() -> None:
    assert resolve_references("#2: add a moon", IMAGES).remainder == "add a moon"
    assert resolve_references("the second one but at sunset", IMAGES).remainder == "but at sunset"
    assert resolve_references("the one with the lighthouse but at night", IMAGES).remainder == "but at night"


def test_numbers_are_never_invented() -> None:
    numbers = {i.number for i in IMAGES}
    for text in ("#0", "#6", "image 12", "the tenth", "the last ten", "#3 and #8"):
        result = resolve_references(text, IMAGES)
        assert set(result.numbers) <= numbers
        assert result.status is RefStatus.MISSING


def test_stem_brings_word_forms_together() -> None:
    assert stem("snowy") == stem("snowier") == stem("snow") == "snow"
    assert stem("foxes") == stem("fox")
    assert stem("foggy") == "fog"


#: #1 upload, #2 fox, #3 edit of #2 (so "the original" of the last image is #2, not the upload)
WITH_UPLOAD = (
    ImageInfo(1, 101, "upload", None, "", "my photo", 800, 600, None),
    _image(2, "a red fox in a meadow"),
    _image(3, "a red fox in a meadow at sunset", "edit", 2),
)


@pytest.mark.parametrize(
    "text",
    [
        "make my upload black and white",
        "my photo as an oil painting",
        "the uploaded photo but at sunset",
        "the uploaded image",
        "my uploaded picture",
        "the upload",
        "the photo I uploaded",
        "the image i just sent",
        "the original photo",
        "the original upload",
    ],
)
def test_upload_phrases_mean_the_newest_upload(text: str) -> None:
    result = resolve_references(text, WITH_UPLOAD)
    assert result.status is RefStatus.RESOLVED, result.question
    assert result.numbers == (1,)
    assert result.explicit


def test_the_newest_upload_wins() -> None:
    images = (*WITH_UPLOAD, ImageInfo(4, 104, "upload", None, "", None, 640, 480, None))
    assert resolve_references("my photo", images).numbers == (4,)


def test_upload_phrases_without_an_upload_ask_for_one() -> None:
    for text in ("make my upload black and white", "my photo as a watercolor", "the uploaded photo"):
        result = resolve_references(text, IMAGES)
        assert result.status is RefStatus.MISSING, text
        assert result.numbers == ()
        assert result.question == NO_UPLOAD_QUESTION
        empty = resolve_references(text, ())
        assert empty.status is RefStatus.NO_IMAGES and empty.question == NO_UPLOAD_QUESTION


def test_the_original_photo_without_an_upload_is_the_original() -> None:
    """People call generated pictures photos too; with no upload this is plain "the original"."""
    result = resolve_references("the original photo", IMAGES)
    assert result.numbers == resolve_references("the original", IMAGES).numbers == (5,)


def test_upload_words_that_are_no_reference() -> None:
    for text in ("my photos of the beach", "press the upload button", "a photo of my dog"):
        assert not any(m.kind == "upload" for m in resolve_references(text, WITH_UPLOAD).mentions), text


def test_the_remainder_drops_the_upload_phrase() -> None:
    assert resolve_references("the uploaded photo but at sunset", WITH_UPLOAD).remainder == "but at sunset"


# -- phrasings a QA pass found leaking into prompts --------------------------------------------

TWO = (_image(1, "a red fox in the snow"), _image(2, "a blue whale underwater"))


@pytest.mark.parametrize(
    ("text", "numbers", "remainder"),
    [
        ("make the other one brighter", (1,), "make brighter"),
        ("the other image at night", (1,), "at night"),
        ("the other, but at sunset", (1,), "but at sunset"),
        ("the one before last at sunset", (1,), "at sunset"),
        ("the one before the last one, add a moon", (1,), "add a moon"),
    ],
)
def test_the_other_one_and_the_one_before_last(text: str, numbers: tuple[int, ...], remainder: str) -> None:
    """With two images, "the other one" is the one that is not the last; no reference word stays behind."""
    result = resolve_references(text, TWO)
    assert result.status is RefStatus.RESOLVED and result.numbers == numbers
    assert result.remainder == remainder


def test_the_other_needs_a_second_image() -> None:
    result = resolve_references("make the other one brighter", TWO[:1])
    assert result.status is RefStatus.MISSING and result.numbers == ()


@pytest.mark.parametrize("text", ["a cat on the other side of the road", "the other half of the moon"])
def test_the_other_in_a_description_is_no_reference(text: str) -> None:
    assert resolve_references(text, TWO).status is RefStatus.NONE


def test_prompt_mentions_uses_word_stems() -> None:
    assert prompt_mentions("a blue whale underwater", "whale")
    assert prompt_mentions("two foxes in the snow", "fox")
    assert not prompt_mentions("a red fox in the snow", "whale")


BATCH = (*IMAGES, _image(6, "a boat", "variation", 5), _image(7, "a boat", "variation", 5))


@pytest.mark.parametrize(
    ("text", "numbers"),
    [
        ("the first of those, make it rain", (6,)),
        ("the second of them at sunset", (7,)),
        ("make the second one bigger", (7,)),  # right after a batch: the second picture just shown
        ("the first one", (6,)),
        ("#2 at sunset", (2,)),
    ],
)
def test_an_ordinal_right_after_a_batch_counts_in_the_batch(text: str, numbers: tuple[int, ...]) -> None:
    assert resolve_references(text, BATCH).numbers == numbers


def test_an_ordinal_after_a_single_image_counts_from_the_start() -> None:
    assert resolve_references("make the second one bigger", IMAGES).numbers == (2,)
    assert resolve_references("three more like the second one", IMAGES).numbers == (2,)


@pytest.mark.parametrize("text", ["the third of those", "the third one"])
def test_an_ordinal_past_the_batch_just_made_asks(text: str) -> None:
    result = resolve_references(text, BATCH)
    assert result.status is not RefStatus.RESOLVED and result.question is not None
    assert "#6, #7" in result.question
