"""Resource limits are enforced before any backend call: the fake server's log is the witness.

Each refusal row configures a limit the turn breaks (the way a user would: a setting), runs the
turn through `Assistant.respond` against the OpenAI images backend on the loopback fake server,
and checks: one clear message, the failed turn on record with no `generations` row (no call
was made), *no request reached the server*, nothing earlier lost, and the next turn works once
the setting is sane again. Caps that can be honoured by doing less (n) make fewer images and
say so. The per-conversation cost budget refuses the turn after the one that spent it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from assistant.agent import LLMAgent
from assistant.core import Assistant
from assistant.offline_planner import OfflinePlanner
from assistant.runtime import open_repository
from assistant.settings import BackendChoice, Settings
from tests.fake_openai import CHAT_COMPLETIONS, EDITS, GENERATIONS, FakeOpenAI, chat_completion, tool_call
from tests.reliability.helpers import (
    assert_clear_message,
    assert_failed_turn,
    assert_nothing_lost,
    assert_usable,
    failed,
    images_made,
    new_generations,
    replied,
    snapshot,
    turn,
)

IMAGE_ROUTES = (GENERATIONS, EDITS)


def openai_settings(data_dir: Path, server: FakeOpenAI, **overrides: Any) -> Settings:
    options: dict[str, Any] = {
        "backend": BackendChoice.OPENAI,
        "openai_base_url": server.base_url,
        "openai_api_key": SecretStr("sk-test-limits-0000"),
        "openai_max_retries": 0,
        "width": 256,
        "height": 256,
    }
    return Settings(data_dir=data_dir, **{**options, **overrides})


def openai_assistant(data_dir: Path, server: FakeOpenAI, **overrides: Any) -> Assistant:
    settings = openai_settings(data_dir, server, **overrides)
    return Assistant(settings, open_repository(settings), planner=OfflinePlanner())


def image_requests(server: FakeOpenAI) -> int:
    return sum(len(server.requests_to(route)) for route in IMAGE_ROUTES)


@dataclass(frozen=True)
class Refusal:
    id: str
    overrides: dict[str, Any]
    text: str
    fragments: tuple[str, ...]
    #: settings under which the same conversation goes on
    fixed: dict[str, Any] = field(default_factory=dict)


REFUSALS = [
    Refusal(
        "width-9000",
        {"width": 9000},
        "a lighthouse at dawn",
        ("9000×256 is too large; the limit is 2048 px per side.",),
    ),
    Refusal(
        "edit-of-an-image-over-max-side",
        {"max_side": 128},
        "make it snowier",
        ("256×256 is too large; the limit is 128 px per side.",),
    ),
    Refusal(
        "steps-over-max",
        {"steps": 500},
        "a lighthouse at dawn",
        ("500 steps is out of range; use 1 to 150 (ATELIER_MAX_STEPS).",),
    ),
    Refusal(
        "total-pixels-per-turn",
        {"max_pixels_per_turn": 200_000},
        "4 images of a cat",
        ("4 × 256×256 is more pixels than one turn may make (200,000)", "fewer or smaller"),
    ),
]


@pytest.mark.parametrize("case", REFUSALS, ids=[c.id for c in REFUSALS])
def test_limits_refuse_before_any_backend_call(tmp_path: Path, server: FakeOpenAI, case: Refusal) -> None:
    data = tmp_path / "data"
    conversation_id = turn(openai_assistant(data, server), None, "a red fox")[0].conversation_id
    limited = openai_assistant(data, server, **case.overrides)
    before = snapshot(limited.repo)
    sent = image_requests(server)

    events = turn(limited, conversation_id, case.text)

    message = failed(events).message
    assert_clear_message(message, *case.fragments)
    assert image_requests(server) == sent  # refused before the call: the server saw nothing
    assert_failed_turn(limited.repo, before, conversation_id, case.text, message, generation=None)
    assert_nothing_lost(before, limited.repo, conversations_touched={conversation_id})
    assert_usable(openai_assistant(data, server, **case.fixed), conversation_id)


@dataclass(frozen=True)
class Cap:
    id: str
    overrides: dict[str, Any]
    text: str
    #: how the agent asks, when the agent plans (None: the offline rules plan)
    agent_args: dict[str, Any] | None
    made: int
    note: str


CAPS = [
    Cap(
        "ten-images-of-a-cat",
        {},
        "10 images of a cat",
        None,
        4,
        "You asked for 10 images; I make at most 4 at a time, so here are 4.",
    ),
    Cap(
        "a-lower-max-n",
        {"max_n": 2},
        "3 images of a cat",
        None,
        2,
        "You asked for 3 images; I make at most 2 at a time, so here are 2.",
    ),
    Cap(
        "agent-asks-for-fifty",
        {},
        "lots of cats",
        {"prompt": "a cat", "n": 50},
        4,
        "You asked for 50 images; I make at most 4 at a time, so here are 4.",
    ),
]


@pytest.mark.parametrize("case", CAPS, ids=[c.id for c in CAPS])
def test_n_is_capped_with_a_note(tmp_path: Path, server: FakeOpenAI, case: Cap) -> None:
    settings = openai_settings(tmp_path / "data", server, **case.overrides)
    if case.agent_args is None:
        assistant = Assistant(settings, open_repository(settings), planner=OfflinePlanner())
    else:
        settings = settings.model_copy(
            update={"chat_base_url": server.base_url, "chat_model": "fake-chat-model"}
        )
        agent = LLMAgent(settings, max_retries=0)
        assistant = Assistant(settings, open_repository(settings), planner=agent, planner_name=agent.name)
        server.enqueue(
            CHAT_COMPLETIONS,
            chat_completion(None, tool_calls=[tool_call("generate_image", case.agent_args, "n50")]),
            chat_completion("Here are your cats."),
        )
    events = turn(assistant, None, case.text)

    assert len(images_made(events)) == case.made
    reply = replied(events).text if case.agent_args is None else _tool_reply(server)
    assert case.note in reply, reply
    (request,) = server.requests_to(GENERATIONS)
    assert request.json["n"] == case.made  # the cap reached the wire: one call, n as capped
    conversation_id = events[0].conversation_id
    (generation,) = assistant.repo.generations(conversation_id)
    assert generation.status == "ok" and generation.params["n"] == case.made


def _tool_reply(server: FakeOpenAI) -> str:
    """What the agent's tool told the model (the cap's note travels with the tool's reply)."""
    last = server.requests_to(CHAT_COMPLETIONS)[-1].json
    return "\n".join(m["content"] for m in last["messages"] if m["role"] == "tool")


def test_cost_budget_refuses_the_next_turn_once_it_is_spent(tmp_path: Path, server: FakeOpenAI) -> None:
    """The fake reports ~1,060 output tokens (≈ $0.032) per image; quality low is estimated at
    ≈ $0.008 before the call, so two turns start under the $0.05 budget and end over it."""
    data = tmp_path / "data"
    assistant = openai_assistant(data, server, cost_budget_usd=0.05, openai_image_quality="low")
    repo = assistant.repo
    conversation_id = turn(assistant, None, "a red fox")[0].conversation_id
    turn(assistant, conversation_id, "a blue bird")  # under budget when it starts, over after it
    spent = [g.cost_usd for g in repo.generations(conversation_id)]
    assert len(spent) == 2 and all(cost is not None and cost > 0.03 for cost in spent)
    assert all(g.usage and g.usage["output_tokens"] > 0 for g in repo.generations(conversation_id))
    assert {r.json["quality"] for r in server.requests_to(GENERATIONS)} == {"low"}
    before = snapshot(repo)
    sent = image_requests(server)

    events = turn(assistant, conversation_id, "a green frog")

    message = failed(events).message
    assert_clear_message(
        message, "This conversation has used its budget ($0.06 of $0.05)", "ATELIER_COST_BUDGET_USD"
    )
    assert image_requests(server) == sent  # refused before the call
    assert_failed_turn(repo, before, conversation_id, "a green frog", message, generation=None)
    assert new_generations(repo, before, conversation_id) == []
    assert_nothing_lost(before, repo, conversations_touched={conversation_id})

    # the budget is per conversation: a new one starts fresh; a raised budget lets this one go on
    fresh = turn(assistant, None, "a green frog")
    assert len(images_made(fresh)) == 1 and image_requests(server) == sent + 1
    assert_usable(openai_assistant(data, server, cost_budget_usd=1.0), conversation_id)


def test_cost_budget_refuses_a_call_that_could_go_over_it_before_it_is_made(
    tmp_path: Path, server: FakeOpenAI
) -> None:
    """At the server's default quality an image may cost ≈ $0.125; four of them do not fit in
    what is left of $0.30 after one image, one more does."""
    data = tmp_path / "data"
    assistant = openai_assistant(data, server, cost_budget_usd=0.30)
    repo = assistant.repo
    conversation_id = turn(assistant, None, "a red fox")[0].conversation_id
    before = snapshot(repo)
    sent = image_requests(server)

    events = turn(assistant, conversation_id, "4 images of a lighthouse")

    message = failed(events).message
    assert_clear_message(
        message,
        "could cost up to $0.50",
        "$0.27 of its $0.30 budget left",
        "fewer",
        "ATELIER_COST_BUDGET_USD",
    )
    assert image_requests(server) == sent  # nothing was sent, nothing was charged
    assert_failed_turn(repo, before, conversation_id, "4 images of a lighthouse", message, generation=None)
    assert_nothing_lost(before, repo, conversations_touched={conversation_id})

    one_more = turn(assistant, conversation_id, "a lighthouse")
    assert len(images_made(one_more)) == 1 and image_requests(server) == sent + 1


def test_the_pixel_cap_holds_for_all_tool_calls_of_one_agent_turn(tmp_path: Path, server: FakeOpenAI) -> None:
    """Two generate_image calls in one turn: the second would take the turn over its pixels."""
    settings = openai_settings(tmp_path / "data", server, max_pixels_per_turn=256 * 256 + 1000)
    settings = settings.model_copy(update={"chat_base_url": server.base_url, "chat_model": "fake-chat-model"})
    agent = LLMAgent(settings, max_retries=0)
    assistant = Assistant(settings, open_repository(settings), planner=agent, planner_name=agent.name)
    server.enqueue(
        CHAT_COMPLETIONS,
        chat_completion(
            None,
            tool_calls=[
                tool_call("generate_image", {"prompt": "a red fox in the snow"}, "first"),
                tool_call("generate_image", {"prompt": "a blue bird over the sea"}, "second"),
            ],
        ),
        chat_completion("Here is the fox; the bird did not fit in this turn."),
    )

    events = turn(assistant, None, "a fox, and separately a bird")

    assert len(images_made(events)) == 1
    assert len(server.requests_to(GENERATIONS)) == 1  # the second call never reached the backend
    assert "on top of the 65,536 this turn has already made" in _tool_reply(server)
    conversation_id = events[0].conversation_id
    assert [g.status for g in assistant.repo.generations(conversation_id)] == ["ok"]
    # the cap is per turn: the next turn starts from zero
    server.enqueue(
        CHAT_COMPLETIONS,
        chat_completion(None, tool_calls=[tool_call("generate_image", {"prompt": "a blue bird"}, "third")]),
        chat_completion("Here is the bird."),
    )
    assert len(images_made(turn(assistant, conversation_id, "now the bird"))) == 1


def test_a_replayed_chain_that_could_go_over_the_budget_sends_nothing(
    tmp_path: Path, server: FakeOpenAI
) -> None:
    """Two images made (≈ $0.064 spent); the root's replay could cost $0.125, the edit's $0.18."""
    data = tmp_path / "data"
    assistant = openai_assistant(data, server, cost_budget_usd=0.30)
    conversation_id = turn(assistant, None, "a red fox")[0].conversation_id
    turn(assistant, conversation_id, "make it snowier")
    tip = assistant.repo.get_image_by_number(conversation_id, 2)
    before = snapshot(assistant.repo)
    sent = image_requests(server)

    from tools.base import InvalidRequest

    with pytest.raises(InvalidRequest) as raised:
        assistant.replay_chain(tip.id, seed=5)

    assert_clear_message(
        raised.value.user_message,
        "Replaying #2 of the chain: This could cost up to $0.18",  # the edit also pays for its input
        "$0.11 of its $0.30 budget left",  # after the root's estimate
    )
    assert image_requests(server) == sent  # not even the root was re-run
    assert_nothing_lost(before, assistant.repo, conversations_touched=set())
    assert len(assistant.repo.conversation_images(conversation_id)) == 2

    roomy = openai_assistant(data, server, cost_budget_usd=1.0)
    created = roomy.replay_chain(tip.id, seed=5)
    assert [i.operation for i in created] == ["generate", "edit"] and image_requests(server) == sent + 2
    assert sum(1 for g in roomy.repo.generations(conversation_id) if g.cost_usd) == 4  # replays are billed
