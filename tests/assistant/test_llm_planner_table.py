"""The shared planner table (`assistant/planner_cases.json`) through the LLM planner.

For every case the fake chat server answers with the tool call a competent model would make,
derived from the case's expected plan (intent edit + targets [2] → edit_image(image_number=2,
…)); cases whose answer is a question, help or a refusal get a text answer with no tool call.
`LLMAgent.plan` must then meet the same expectations as the offline planner: this shows that
the tool-call → Plan mapping, the validation and `enforce_capabilities` handle every case.

Where the expected plan is the agent's own policy applied to what the user asked for (a batch
capped at max_n, a backend fallback, an image number that does not exist), the model calls the
tool the user asked for and the agent must produce the expectation: see `ASKED_FOR`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from assistant.agent import LLMAgent
from assistant.plan import REPLY_ONLY_INTENTS, Intent, Plan, PlannerContext
from assistant.settings import ChatFailureMode, Settings
from tests.assistant.planner_table import build_context, check_plan, load_cases
from tests.fake_openai import CHAT_COMPLETIONS, CannedResponse, FakeOpenAI, chat_completion, tool_call

CASES = load_cases()
TEXT_INTENTS = {"clarify", "help", "refuse"}

#: The call the user asked for, where the expected plan is what the agent makes of it.
ASKED_FOR: dict[str, tuple[str, dict[str, Any]]] = {
    "variation-fallback-edit": ("vary_image", {"image_number": 1, "n": 3}),
    "variation-unsupported": ("vary_image", {"image_number": 1, "n": 3}),
    "edit-fallback-img2img": (
        "edit_image",
        {
            "image_number": 1,
            "instruction": "snowier",
            "prompt": "a cozy cabin in the woods at night, heavy snowfall",
        },
    ),
    "edit-unsupported": (
        "edit_image",
        {
            "image_number": 1,
            "instruction": "snowier",
            "prompt": "a cozy cabin in the woods at night, heavy snowfall",
        },
    ),
    "img2img-upload-fallback-edit": (
        "redraw_image",
        {"use_upload": True, "prompt": "the photo as a watercolor painting", "style": "watercolor"},
    ),
    "edit-missing-number": (
        "edit_image",
        {"image_number": 9, "prompt": "a cozy cabin in the woods at sunset"},
    ),
    "describe-missing": ("describe_image", {"image_number": 7, "about": "prompt"}),
    "regenerate-upscale-target": ("regenerate_image", {"image_number": 5}),
}


#: What a model fills in for a transform's required arguments when the table does not pin them.
REQUIRED_TRANSFORM_ARGS: dict[str, dict[str, Any]] = {
    "rotate": {"degrees": 90},
    "flip": {"direction": "horizontal"},
    "crop": {"aspect": "1:1"},
    "resize": {"width": 512, "height": 512},
}


def _prompt(expect: dict[str, Any]) -> str:
    if "prompt_equals" in expect:
        return str(expect["prompt_equals"])
    parts = [expect.get("prompt_starts_with"), *expect.get("prompt_contains", [])]
    return ", ".join(dict.fromkeys(p for p in parts if p)) or "a picture"


def _requested_n(case: dict[str, Any]) -> int:
    """The batch the user typed when the table expects it capped ("draw 10 cats" → 10)."""
    expect = case["expect"]
    if any("at most" in r for r in expect.get("reply_contains", [])):
        m = re.search(r"\d+", case["text"])
        if m:
            return int(m.group())
    return int(expect.get("n", 1))


def model_call(case: dict[str, Any], context: PlannerContext) -> tuple[str, dict[str, Any]] | str:
    """The tool call (name, args) a competent model makes for the case, or its text answer."""
    if case["id"] in ASKED_FOR:
        return ASKED_FOR[case["id"]]
    expect = case["expect"]
    intent = expect["intent"]
    if intent in TEXT_INTENTS:
        facts = " ".join(expect.get("reply_contains", []))
        return f"Let me check first ({facts})." if facts else "Could you say a bit more?"
    targets = list(expect.get("targets", []))
    first = targets[0] if targets else (context.last.number if context.last else 1)
    args: dict[str, Any] = {}
    if expect.get("seed") is not None:
        args["seed"] = expect["seed"]
    style = expect.get("style")
    if style and style != context.style:  # a default style must come from the settings, not the model
        args["style"] = style
    negative = ", ".join(expect.get("negative_contains", []))
    if negative:
        args["negative_prompt"] = negative
    n = _requested_n(case)
    if intent == "generate":
        args |= {"prompt": _prompt(expect), "n": n}
        if expect.get("verbatim") and not context.verbatim:
            args["verbatim"] = True
        return "generate_image", args
    if intent == "edit":
        return "edit_image", {
            **args,
            "image_number": first,
            "instruction": case["text"],
            "prompt": _prompt(expect),
        }
    if intent == "inpaint":
        return "inpaint_image", {**args, "image_number": first, "prompt": _prompt(expect)}
    if intent == "variation":
        args.pop("negative_prompt", None)
        if "strength" in expect:
            args["strength"] = sum(expect["strength"]) / 2
        source = context.image(first)
        wanted = expect.get("prompt_contains", [])
        if source is not None and any(w.lower() not in source.prompt.lower() for w in wanted):
            args["prompt"] = _prompt(expect)  # "variations with a moon": the changed prompt
        return "vary_image", {**args, "image_number": first, "n": n}
    if intent == "img2img":
        if "strength" in expect:
            args["strength"] = sum(expect["strength"]) / 2
        return "redraw_image", {**args, "image_number": first, "prompt": _prompt(expect), "n": n}
    if intent in ("upscale", "transform"):
        operation = expect.get("transform") or "upscale"
        return "transform_image", {
            "image_numbers": targets or [first],
            "operation": operation,
            "args": {**REQUIRED_TRANSFORM_ARGS.get(operation, {}), **expect.get("transform_args", {})},
        }
    if intent == "regenerate":
        return "regenerate_image", {**args, "image_number": first}
    if intent == "describe":
        kind = expect.get("question_kind", "prompt")
        if kind == "list":
            return "list_images", {}
        if kind == "lineage":
            return "describe_lineage", {"image_number": first}
        return "describe_image", {"image_number": first, "about": kind}
    raise AssertionError(f"no model call for intent {intent!r}")


def scripted(case: dict[str, Any], context: PlannerContext) -> CannedResponse:
    answer = model_call(case, context)
    if isinstance(answer, str):
        return chat_completion(answer)
    name, args = answer
    # a model that says why it skips part of the request says so next to its call
    words = " ".join(expect_words(case)) or None
    return chat_completion(words, tool_calls=[tool_call(name, args)])


def expect_words(case: dict[str, Any]) -> list[str]:
    """Reply words the model itself would say (not the agent's capping or fallback notes)."""
    expect = case["expect"]
    if expect["intent"] in TEXT_INTENTS or expect["intent"] == "describe":
        return []
    own = [r for r in expect.get("reply_contains", []) if r not in ("at most 4", "instead")]
    return [f"I'll {w} the part about my instructions." if w == "ignore" else w for w in own]


@pytest.fixture(scope="module")
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture(scope="module")
def agent(server: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory) -> LLMAgent:
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("llm-table"),
        chat_base_url=server.base_url,
        chat_model="fake-chat-model",
        chat_api_key=SecretStr("sk-test-table"),
        chat_on_failure=ChatFailureMode.FAIL,
    )
    return LLMAgent(settings, max_retries=0)


def _plan(case: dict[str, Any], agent: LLMAgent, server: FakeOpenAI) -> tuple[Plan, PlannerContext]:
    server.reset()
    context = build_context(case["context"])
    if case["text"].strip():
        server.enqueue(CHAT_COMPLETIONS, scripted(case, context))
    plan = agent.plan(case["text"], context)
    assert server.pending(CHAT_COMPLETIONS) == 0, "the scripted answer was not used"
    return plan, context


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_case(case: dict[str, Any], agent: LLMAgent, server: FakeOpenAI) -> None:
    plan, context = _plan(case, agent, server)
    problems = check_plan(plan, case["expect"])
    assert not problems, f"{case['text']!r} via {model_call(case, context)!r}: " + "; ".join(problems)
    # the same invariants as the offline planner
    assert set(plan.targets) <= {i.number for i in context.images}
    assert 1 <= plan.n <= context.max_n
    if plan.intent in REPLY_ONLY_INTENTS:
        assert plan.reply
    else:
        assert plan.operation is not None and context.can(plan.operation)
    if not context.backend_takes_negative_prompt:
        assert plan.negative_prompt == ""
    assert Plan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan


def test_every_case_asks_the_model_with_tools_and_the_image_list(agent: LLMAgent, server: FakeOpenAI) -> None:
    case = next(c for c in CASES if c["id"] == "edit-hash-but")
    _plan(case, agent, server)
    (request,) = server.requests_to(CHAT_COMPLETIONS)
    body = request.json
    names = {tool["function"]["name"] for tool in body["tools"]}
    assert {"generate_image", "edit_image", "vary_image", "transform_image", "regenerate_image"} <= names
    assert "inpaint_image" not in names  # no mask attached
    assert not any("delete" in name for name in names)
    system = body["messages"][0]
    assert system["role"] == "system"
    assert "<image_data>" in system["content"] and '"number": 2' in system["content"]
    assert body["messages"][-1] == {"role": "user", "content": case["text"]}


def test_empty_text_asks_the_user_without_calling_the_model(agent: LLMAgent, server: FakeOpenAI) -> None:
    server.reset()
    plan = agent.plan("   ", PlannerContext())
    assert plan.intent is Intent.CLARIFY and plan.reply
    assert server.requests_to(CHAT_COMPLETIONS) == []


def test_table_covers_every_tool(tmp_path: Path) -> None:
    """The derivation above exercises each tool at least once (so the table tests them all)."""
    used = set()
    for case in CASES:
        answer = model_call(case, build_context(case["context"]))
        if not isinstance(answer, str):
            used.add(answer[0])
    from assistant.agent_tools import TOOLS

    assert used == set(TOOLS)
