"""The UI's non-rendering helpers, without Streamlit: the banner, the steps limit, the URL id."""

from __future__ import annotations

from pathlib import Path

import pytest

from assistant.backends import backend_banner
from assistant.settings import BackendChoice, Settings
from assistant.ui import support
from assistant.ui.support import Keys
from storage.models import Message
from tests.ui.conftest import clean_environment


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    clean_environment(monkeypatch)
    return Settings(data_dir=tmp_path)


def test_the_diffusers_banner_says_how_to_set_a_missing_model(settings: Settings) -> None:
    unset = backend_banner(settings.model_copy(update={"backend": BackendChoice.DIFFUSERS}))
    assert "None" not in unset
    assert "no model set: set ATELIER_DIFFUSERS_MODEL=/path/to/model" in unset
    assert unset.endswith("planning: the offline planner (rules, no LLM).")

    configured = settings.model_copy(
        update={"backend": BackendChoice.DIFFUSERS, "diffusers_model": "/models/sd15"}
    )
    assert backend_banner(configured).startswith("Images: local diffusers model /models/sd15;")


def test_the_steps_limit_never_offers_a_value_the_backend_refuses(settings: Settings) -> None:
    from tools.offline import MAX_STEPS

    assert support.OFFLINE_MAX_STEPS == MAX_STEPS  # the UI's copy of the offline renderer's limit
    assert support.steps_limit(settings, "offline") == MAX_STEPS
    assert support.steps_limit(settings, "diffusers") == min(settings.max_steps, 150)
    strict = settings.model_copy(update={"max_steps": 30})
    assert support.steps_limit(strict, "offline") == 30  # ATELIER_MAX_STEPS is a limit too
    assert support.steps_limit(strict, "openai") == 30


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("12", 12),
        (" 7 ", 7),
        ("0", None),
        ("-3", None),
        ("abc", None),
        ("1e3", None),
        ("²", None),
        ("", None),
    ],
)
def test_the_conversation_in_the_url_is_a_positive_integer(raw: str, expected: int | None) -> None:
    assert support.parse_conversation_param(raw) == expected


# ----- which images offer Regenerate ----------------------------------------------------------


def test_regenerate_is_offered_where_the_assistant_can_re_roll() -> None:
    from assistant.agent_tools import _NOT_REGENERABLE

    assert support.NOT_REGENERABLE == _NOT_REGENERABLE  # the UI and the planners agree
    for operation in ("upload", "upscale", "transform"):
        assert not support.can_regenerate(operation, parent_id=1)
    assert support.can_regenerate("generate", parent_id=None)
    for operation in ("edit", "inpaint", "variation", "img2img"):
        assert support.can_regenerate(operation, parent_id=7)
        assert not support.can_regenerate(operation, parent_id=None)  # its source is gone


# ----- replies under the message they answer ----------------------------------------------------


def _message(id_: int, role: str, content: str, status: str = "ok", answers: str | None = None) -> Message:
    plan = None if answers is None else {"instruction": answers}
    return Message(id=id_, conversation_id=1, role=role, content=content, status=status, plan=plan)


def _order(messages: list[Message]) -> list[int]:
    return [m.id for m in support.answer_order(messages)]


def test_a_cancelled_reply_goes_under_the_message_it_answers() -> None:
    stored = [
        _message(1, "user", "four cats on a sofa"),
        _message(2, "user", "a dog in the park"),
        _message(3, "assistant", "Cancelled", "cancelled", answers="four cats on a sofa"),
        _message(4, "assistant", "Here you go", answers="a dog in the park"),
    ]
    assert _order(stored) == [1, 3, 2, 4]
    # recorded the other way round (the first turn ended after the second): the same picture
    assert _order([stored[0], stored[1], stored[3], stored[2]]) == [1, 3, 2, 4]


def test_the_same_words_twice_the_interrupted_turn_is_the_first() -> None:
    stored = [
        _message(1, "user", "a fox"),
        _message(2, "user", "a fox"),
        _message(3, "assistant", "Cancelled", "cancelled", answers="a fox"),
        _message(4, "assistant", "Here you go", answers="a fox"),
    ]
    assert _order(stored) == [1, 3, 2, 4]


def test_replies_that_cannot_be_placed_keep_the_stored_order() -> None:
    plain = [
        _message(1, "user", "a fox"),
        _message(2, "assistant", "Here you go", answers="a fox"),
        _message(3, "user", "make it darker"),
        _message(4, "assistant", "The upload can't be used", "failed"),  # no plan words
        _message(5, "assistant", "Edited", answers="make it darker"),
    ]
    assert _order(plain) == [1, 2, 3, 4, 5]
    unplaced = [
        _message(1, "user", "a fox"),  # never answered (the process was stopped)
        _message(2, "user", "a cat"),
        _message(3, "assistant", "Something went wrong", "failed"),
    ]
    assert _order(unplaced) == [1, 2, 3]  # under the last message, as before
    strays = [_message(0, "assistant", "a reply before any message"), *plain]
    assert _order(strays) == [0, 1, 2, 3, 4, 5]


# ----- the sidebar's settings in the URL --------------------------------------------------------


OFFERED = {
    "backends": ["offline", "openai"],
    "sizes": ["Backend default", "768x512"],
    "styles": ["(none)", "anime"],
}


def test_settings_round_trip_through_the_url() -> None:
    values = {
        Keys.BACKEND: "openai",
        Keys.SIZE: "768x512",
        Keys.STEPS: 40,
        Keys.GUIDANCE: 4.5,
        Keys.STYLE: "anime",
        Keys.VERBATIM: True,
        Keys.SEED_MODE: support.FIXED_SEED,
        Keys.SEED: 1234,
    }
    params = support.sidebar_params(values)
    assert support.sidebar_values(params, **OFFERED) == values
    defaults = {**values, Keys.SIZE: "Backend default", Keys.SEED_MODE: support.RANDOM_SEED}
    assert support.changed_params(values, defaults) == {"size": "768x512", "seed": "1234"}
    assert support.changed_params(defaults, defaults) == {}


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("backend", "gpu"),
        ("size", "99999x1"),
        ("style", "<script>"),
        ("steps", "0"),
        ("steps", "100000"),
        ("guidance", "nan"),
        ("guidance", "-1"),
        ("guidance", "25"),
        ("exact", "yes"),
        ("seed", "-1"),
        ("seed", str(2**32)),
        ("openai_model", "gpt-image-1"),  # model names never come from a URL
        ("local_model", "/somewhere/weights"),
    ],
)
def test_settings_the_widgets_do_not_offer_are_ignored(name: str, raw: str) -> None:
    assert support.sidebar_values({name: raw}, **OFFERED) == {}


def test_a_random_seed_and_an_off_step_guidance_in_the_url() -> None:
    assert support.sidebar_values({"seed": "random"}, **OFFERED) == {Keys.SEED_MODE: support.RANDOM_SEED}
    assert support.sidebar_values({"guidance": "7.3"}, **OFFERED) == {Keys.GUIDANCE: 7.5}  # the slider's step


def _views(messages: list[Message]) -> list[support.MessageView]:
    return support.conversation_view(messages, [], lambda image: Path("unused"))


def test_a_message_no_reply_was_stored_for_is_flagged_and_the_last_one_says_try_again() -> None:
    stored = [
        _message(1, "user", "a fox"),  # the server restarted mid-turn
        _message(2, "user", "a lighthouse"),
        _message(3, "assistant", "Here you go", answers="a lighthouse"),
        _message(4, "user", "make it darker"),  # and again
    ]
    views = _views(stored)
    assert [(v.id, v.unanswered, v.last) for v in views] == [
        (1, True, False),
        (2, False, False),
        (3, False, False),
        (4, True, True),
    ]
    answered = _views([*stored[:3]])
    assert [v.unanswered for v in answered] == [True, False, False]


def test_a_retry_and_a_turn_cancelled_by_the_next_message_are_not_flagged_unanswered() -> None:
    retried = [
        _message(1, "user", "a lighthouse"),  # the server died, then:
        _message(2, "user", "try again"),
        _message(3, "assistant", "Retrying your earlier request …", answers="a lighthouse"),
    ]
    assert [(v.id, v.unanswered) for v in _views(retried)] == [(1, False), (3, False), (2, False)]
    cancelled = [
        _message(1, "user", "four cats on a sofa"),
        _message(2, "user", "a dog in the park"),
        _message(3, "assistant", "Cancelled", "cancelled", answers="four cats on a sofa"),
        _message(4, "assistant", "Here you go", answers="a dog in the park"),
    ]
    assert [v.unanswered for v in _views(cancelled)] == [False] * 4


def test_an_empty_conversation_has_no_views() -> None:
    assert _views([]) == []


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"steps": 30, "guidance": 7.5, "sampler": "Euler a"}, "30 steps · CFG 7.5 · Euler a"),
        ({"steps": 25, "guidance": 7.0, "scheduler": "DPMSolverMultistepScheduler"}, "25 steps · CFG 7 · "
         "DPMSolverMultistepSched…"),
        ({"steps": 25}, "25 steps"),  # the offline renderer: no CFG used
        ({"quality": "high"}, ""),  # OpenAI: none of them
        ({"steps": True, "guidance": "7"}, ""),  # not numbers: not shown
    ],
)  # fmt: skip
def test_the_settings_line_shows_the_sampling_settings_an_image_was_made_with(
    params: dict[str, object], words: str
) -> None:
    assert support.sampling_words(params) == words
