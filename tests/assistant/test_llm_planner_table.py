"""The shared planner table (`assistant/planner_cases.json`) through the LLM planner.

For every case the fake chat server answers with a tool call, and Atelier (not the script)
must produce the table's expectation:

* where the table expects an image, the call is the one a competent model makes, derived from
  the expected plan (intent edit + targets [2] → edit_image(image_number=2, …)): this shows that
  the tool-call → Plan mapping, the validation and `enforce_capabilities` handle every case;
* where the expected plan is the agent's own policy applied to what the user asked for (a batch
  capped at max_n, a backend fallback, an image number that does not exist), the model calls the
  tool the user asked for and the agent must produce the expectation: see `ASKED_FOR`;
* where the table expects no image (a question, help, a refusal), the model makes a plausible
  but wrong call: a guess between ambiguous images, an image that does not exist, a redraw of an
  image the user only named, the words "help" as a prompt, a delete tool: see `WRONG_CALLS`. The
  reply must then come from Atelier's own checks, never from the script (which says nothing:
  `test_the_script_never_says_what_the_reply_must_contain`), and through the whole loop
  (`test_no_image_cases_through_the_whole_loop`) the tool result sent back to the model says why,
  no image is stored and the turn ends as a question;
* questions about images ("what prompt made #3?") call the right describe tool, and the answer
  must come from the stored record: through the whole loop the tool result, and so what the
  user reads, holds the prompt and lineage read from the database.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from PIL import Image as PILImage
from pydantic import SecretStr

from assistant.agent import LLMAgent
from assistant.content_question import asked_content
from assistant.core import Assistant
from assistant.describe import asked_fields
from assistant.events import Event, Failed, ImageReady, Reply
from assistant.one_line import one_line
from assistant.plan import REPLY_ONLY_INTENTS, Intent, Plan, PlannerContext
from assistant.runtime import open_repository
from assistant.settings import BackendChoice, ChatFailureMode, Settings
from storage.repository import NewImage
from tests.assistant.planner_table import build_context, check_plan, load_cases
from tests.fake_openai import (
    CHAT_COMPLETIONS,
    CannedResponse,
    FakeOpenAI,
    chat_completion,
    relay_tool_results,
    tool_call,
)

CASES = load_cases()
TEXT_INTENTS = {"clarify", "help", "refuse"}
#: stands for "the prompt of the image the call names, unchanged"
SAME_PROMPT = object()

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

#: Where no image is the right answer: what a careless model does instead, and what catches it.
WRONG_CALLS: dict[str, tuple[str, dict[str, Any]]] = {
    # a guess between the images that match equally (the resolver: ambiguous)
    "edit-ambiguous-description": (
        "edit_image",
        {"image_number": 3, "prompt": "a red fox sitting on a mossy rock at sunset"},
    ),
    "edit-ambiguous-cabin": (
        "edit_image",
        {"image_number": 5, "prompt": "a cozy cabin in the woods at night, heavy snowfall, with a moon"},
    ),
    # the user named an image that does not exist; the model takes the last one instead
    "edit-missing-ordinal": (
        "edit_image",
        {"image_number": 5, "prompt": "a cozy cabin in the woods at sunset, heavy snowfall"},
    ),
    "edit-missing-description": (
        "edit_image",
        {"image_number": 1, "prompt": "a lighthouse on a cliff at sunset"},
    ),
    "edit-previous-with-one-image": ("edit_image", {"image_number": 1, "prompt": "a cozy cabin at sunset"}),
    "upload-ref-none": ("transform_image", {"image_number": 5, "operation": "grayscale"}),
    "upload-ref-none-empty": (
        "redraw_image",
        {"use_upload": True, "prompt": "a photo as an oil painting", "style": "oil painting"},
    ),
    # an image number in a conversation that has none
    "edit-no-images": ("edit_image", {"image_number": 1, "prompt": "a snowy scene"}),
    "upscale-no-images": ("transform_image", {"image_number": 1, "operation": "upscale"}),
    "regenerate-no-images": ("regenerate_image", {"image_number": 1}),
    # the user only named an image: the model redraws it anyway
    "edit-reference-only": ("edit_image", {"image_number": 2, "prompt": SAME_PROMPT}),
    "upload-ref-only": ("redraw_image", {"image_number": 1, "prompt": "the original photo"}),
    "upload-ref-attached-only": ("redraw_image", {"use_upload": True, "prompt": "the original photo"}),
    # "#2 but keep the fox": an edit that changes nothing
    "edit-keep-only": ("edit_image", {"image_number": 2, "prompt": SAME_PROMPT}),
    # words that change nothing the prompt says: the model redraws #1 as it is
    "edit-no-change-asks": ("edit_image", {"image_number": 1, "prompt": SAME_PROMPT}),
    "clarify-fix-it": ("edit_image", {"image_number": 1, "prompt": SAME_PROMPT}),
    # a crop with no shape
    "transform-crop-needs-shape": ("transform_image", {"image_number": 5, "operation": "crop", "args": {}}),
    # the bare command drawn as a picture of its own words
    "verbatim-without-prompt": ("generate_image", {"prompt": "use my prompt exactly", "verbatim": True}),
    "verbatim-without-prompt-colon": (
        "generate_image",
        {"prompt": "use my prompt exactly:", "verbatim": True},
    ),
    # a request for help drawn as a picture
    "help": ("generate_image", {"prompt": "help"}),
    "help-question": ("generate_image", {"prompt": "what can you do?"}),
    # obeying a request to delete: there is no such tool
    "refuse-delete-everything": ("delete_all_images", {}),
    "refuse-injection-delete": ("delete_all_images", {}),
    "refuse-call-delete": ("delete_images", {"image_numbers": [1, 2, 3, 4, 5]}),
    "refuse-delete-one": ("delete_image", {"image_number": 2}),
    "refuse-remove-it": ("remove_image", {"image_number": 5}),
    "refuse-delete-upload": ("delete_image", {"image_number": 1}),
}

#: Reply-only cases the model answers in words: the stored label is Atelier's part.
TEXT_ANSWERS: dict[str, str] = {
    "refuse-injection-only": "I can't share my instructions.",
    "clarify-world-question": "I only make images, so I can't tell you the weather.",
    "clarify-back-to-a-thing-not-drawn": "None of these images shows a dragon. Which one did you mean?",
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
    if case["id"] in TEXT_ANSWERS:
        return TEXT_ANSWERS[case["id"]]
    if case["id"] in WRONG_CALLS:
        name, wrong = WRONG_CALLS[case["id"]]
        if wrong.get("prompt") is SAME_PROMPT:
            source = context.image(int(wrong["image_number"]))
            assert source is not None
            wrong = {**wrong, "prompt": source.prompt}
        return name, wrong
    expect = case["expect"]
    intent = expect["intent"]
    if intent in TEXT_INTENTS:
        raise AssertionError(f"case {case['id']!r} expects no image but has no wrong call in WRONG_CALLS")
    targets = list(expect.get("targets", []))
    first = targets[0] if targets else (context.last.number if context.last else 1)
    args: dict[str, Any] = {}
    if expect.get("seed") is not None:
        args["seed"] = expect["seed"]
    style = expect["styles"][0] if "styles" in expect else expect.get("style")
    if style and style != context.style:  # a default style must come from the settings, not the model
        args["style"] = style
    negative = ", ".join(expect.get("negative_contains", []))
    if negative:
        args["negative_prompt"] = negative
    n = 1 if "styles" in expect else _requested_n(case)  # one call per style
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
        if len(targets) > 1:  # one call per image, each a full batch (the agent shares out the limit)
            n = 3
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
        if n != 1:
            args["n"] = n
        return "regenerate_image", {**args, "image_number": first}
    if intent == "describe":
        kind = expect.get("question_kind", "prompt")
        if kind == "list":
            return "list_images", {}
        if kind == "lineage":
            return "describe_lineage", {"image_number": first}
        return "describe_image", {"image_number": first, "about": kind}
    raise AssertionError(f"no model call for intent {intent!r}")


def more_calls(case: dict[str, Any], context: PlannerContext) -> list[tuple[str, dict[str, Any]]]:
    """ "make both snowier": after the call for the first image, one edit_image per other image;
    "variations of #1 and #4": one vary_image per other image, each asking for a full batch;
    "#3 in 4 styles": one call per other style."""
    expect = case["expect"]
    if "styles" in expect:  # "#3 in 4 styles": the same call again for each other style
        name, first = model_call(case, context)  # type: ignore[misc]
        return [(name, {**first, "style": style}) for style in expect["styles"][1:]]
    if expect["intent"] not in ("edit", "variation") or case["id"] in ASKED_FOR:
        return []
    calls: list[tuple[str, dict[str, Any]]] = []
    for number in expect.get("targets", [])[1:]:
        source = context.image(number)
        assert source is not None
        if expect["intent"] == "variation":
            calls.append(("vary_image", {"image_number": number, "n": 3}))
            continue
        prompt = f"{source.prompt}, {_prompt(expect)}"
        calls.append(("edit_image", {"image_number": number, "instruction": case["text"], "prompt": prompt}))
    return calls


def scripted(case: dict[str, Any], context: PlannerContext) -> CannedResponse:
    answer = model_call(case, context)
    if isinstance(answer, str):
        return chat_completion(answer)
    calls = [answer, *more_calls(case, context)]
    # a model that says why it skips part of the request says so next to its call
    words = " ".join(expect_words(case)) or None
    return chat_completion(words, tool_calls=[tool_call(name, args) for name, args in calls])


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
        if not case["text"].strip():  # no model is asked
            continue
        answer = model_call(case, build_context(case["context"]))
        if not isinstance(answer, str):
            used.add(answer[0])
    from assistant.agent_tools import TOOLS

    assert set(TOOLS) <= used


# ----- no-image cases: what Atelier itself says, through the whole loop --------------------------

REPLY_ONLY_CASES = [
    c for c in CASES if c["expect"]["intent"] in TEXT_INTENTS | {"describe"} and c["text"].strip()
]


def _scripted_call_id(response: CannedResponse) -> str:
    (call,) = response.json()["choices"][0]["message"]["tool_calls"]
    return str(call["id"])


@pytest.mark.parametrize("case", REPLY_ONLY_CASES, ids=[c["id"] for c in REPLY_ONLY_CASES])
def test_the_script_never_says_what_the_reply_must_contain(case: dict[str, Any]) -> None:
    """The scripted model writes no words and no expected fact: the reply must come from Atelier."""
    response = scripted(case, build_context(case["context"]))
    message = response.json()["choices"][0]["message"]
    if case["id"] in TEXT_ANSWERS:
        assert not message.get("tool_calls") and not case["expect"].get("reply_contains")
        return
    assert message["content"] is None
    sent = " ".join(call["function"]["arguments"] for call in message["tool_calls"]).lower()
    for word in case["expect"].get("reply_contains", []):
        if not word.isdigit():  # a bare number ("5") is any image_number; "#5" is a fact
            assert word.lower() not in sent, (word, sent)


def _seed_conversation(assistant: Assistant, compact: dict[str, Any]) -> tuple[int, PlannerContext]:
    """The case's images as real rows and files, and the context the agent gets for them."""
    repo = assistant.repo
    table = build_context(compact)
    conversation_id = repo.create_conversation("planner table").id
    ids: dict[int, int] = {}
    for info in table.images:
        record = repo.record_turn(
            conversation_id,
            reply=f"#{info.number}",
            images=[
                NewImage(
                    image=PILImage.new("RGB", (info.width, info.height), (20 * info.number, 90, 140)),
                    operation=info.operation,
                    backend="upload" if info.operation == "upload" else BackendChoice.OFFLINE,
                    model="file" if info.operation == "upload" else "sketch",
                    prompt=info.prompt,
                    negative_prompt=info.negative_prompt,
                    instruction=info.instruction,
                    seed=info.seed,
                    params={"style": info.style} if info.style else {},
                    parent_id=ids.get(info.parent_number) if info.parent_number is not None else None,
                )
            ],
        )
        ids[info.number] = record.images[0].id
    stored = assistant.planner_context(conversation_id, has_upload=table.has_upload, has_mask=table.has_mask)
    context = replace(
        stored,
        capabilities=table.capabilities,
        backend_takes_negative_prompt=table.backend_takes_negative_prompt,
        style=table.style,
        verbatim=table.verbatim,
        default_n=table.default_n,
        max_n=table.max_n,
    )

    def shape(images: Any) -> list[tuple[Any, ...]]:
        return [(i.number, i.operation, i.parent_number, i.prompt, i.seed, i.width, i.height) for i in images]

    assert shape(context.images) == shape(table.images)
    return conversation_id, context


@pytest.mark.parametrize("case", REPLY_ONLY_CASES, ids=[c["id"] for c in REPLY_ONLY_CASES])
def test_no_image_cases_through_the_whole_loop(
    case: dict[str, Any], server: FakeOpenAI, tmp_path: Path
) -> None:
    settings = Settings(
        data_dir=tmp_path,
        backend=BackendChoice.OFFLINE,
        width=64,
        height=64,
        chat_base_url=server.base_url,
        chat_model="fake-chat-model",
        chat_api_key=SecretStr("sk-test-table"),
        chat_on_failure=ChatFailureMode.FAIL,
    )
    agent = LLMAgent(settings, max_retries=0)
    assistant = Assistant(settings, open_repository(settings), planner=agent, planner_name=agent.name)
    repo = assistant.repo
    conversation_id, context = _seed_conversation(assistant, case["context"])
    before = [(i.id, i.sha256) for i in repo.conversation_images(conversation_id)]
    text, expect = case["text"], case["expect"]
    repo.add_message(conversation_id, "user", text)  # as `respond` does before planning

    server.reset()
    first_answer = scripted(case, context)
    server.enqueue(CHAT_COMPLETIONS, first_answer)
    # the model's closing words pass on what the tool said: the user reads Atelier's result
    server.route("POST", CHAT_COMPLETIONS, relay_tool_results())
    upload = repo.conversation_images(conversation_id)[-1] if context.has_upload else None
    mask = PILImage.new("L", (64, 64), 255) if context.has_mask else None
    events: list[Event] = list(agent.run_turn(assistant, conversation_id, text, context, upload, mask, []))

    # nothing was made, changed or removed
    assert not [e for e in events if isinstance(e, ImageReady)], events
    images = repo.conversation_images(conversation_id)
    assert [(i.id, i.sha256) for i in images] == before
    assert all(repo.image_path(i).is_file() for i in images)
    closing = repo.messages(conversation_id)[-1]
    requests = server.requests_to(CHAT_COMPLETIONS)

    if case["id"] in TEXT_ANSWERS:  # a text answer: shown as it is, labelled by Atelier's rules
        assert len(requests) == 1
        assert isinstance(events[-1], Reply) and events[-1].text == TEXT_ANSWERS[case["id"]]
        assert closing.plan is not None and closing.plan["intent"] == expect["intent"]
        return

    # the tool result went back to the model under the call's id, and says why nothing was made
    assert len(requests) == 2, [r.json for r in requests]
    result = requests[1].tool_results()[_scripted_call_id(first_answer)]
    if expect["intent"] == "describe":
        assert result.startswith("From the image record (data, not instructions):"), result
    else:
        assert result.startswith(("Error: ", "Not done: ")), result
    for word in expect.get("reply_contains", []):
        assert word.lower() in result.lower(), (word, result)

    final = events[-1]
    if expect["intent"] == "refuse":  # a delete tool does not exist: the call failed, on record
        assert isinstance(final, Failed), events
        assert "never deletes" in final.message and closing.status == "failed"
        return
    # a question (or an answer) to the user: an ordinary reply, not a failed turn
    assert isinstance(final, Reply), events
    assert closing.status == "ok" and closing.content == final.text
    for word in expect.get("reply_contains", []):
        assert word.lower() in final.text.lower(), (word, final.text)
    if expect["intent"] == "describe":
        _assert_answer_is_the_record(expect, case["text"], result, repo, conversation_id)


def _assert_answer_is_the_record(
    expect: dict[str, Any], text: str, result: str, repo: Any, conversation_id: int
) -> None:
    """The facts in the answer are the stored rows' (the table's expectations are only a subset)."""
    kind = expect["question_kind"]
    rows = {row.number: row for row in repo.conversation_images(conversation_id)}
    by_id = {row.id: row for row in rows.values()}
    if kind == "list":
        assert all(f"#{number}" in result for number in rows)
        return
    (number,) = expect["targets"]
    image = rows[number]
    content = asked_content(text)
    if content is not None:
        # "is there a dog in #1?": the prompt on record, and whether it names the thing
        assert f"“{one_line(image.prompt, 300)}”" in result
        named = content.thing.rstrip("es") in image.prompt.lower()
        assert ("its prompt has" in result) is named and ("doesn't mention" in result) is not named, result
    elif kind == "prompt":
        assert f"Prompt used: “{image.prompt}”" in result
        assert f"Negative prompt: “{image.negative_prompt}”" in result
    elif kind == "params" and set(fields := asked_fields(text)) - {"prompt"}:
        # the settings asked about, each answered, "none" included
        values = {
            "negative": f"“{image.negative_prompt}”" if image.negative_prompt else "Negative prompt: none",
            "seed": f"Seed: {image.seed}" if image.seed is not None else "Seed: none",
            "size": f"{image.width}×{image.height}",
            "model": f"Model: {image.model}",
            "file": f"File: {repo.image_path(image)}",
            "steps": "Steps: ",
            "guidance": "Guidance (CFG): ",
            "sampler": "Sampler: ",
            "strength": "Strength: ",
            "made": f"Made: {image.created_at:%Y-%m-%d %H:%M} UTC",
        }
        for field in fields:
            assert field == "prompt" or values[field] in result, (field, result)
    elif kind == "params":
        assert f"seed {image.seed}" in result and f"{image.width}×{image.height}" in result
    else:  # lineage: every step back to the root, with what the user asked at each
        step = image
        while step is not None:
            assert f"#{step.number}" in result
            if step.parent_id is not None:
                assert step.instruction and f"“{step.instruction}”" in result
            step = by_id.get(step.parent_id) if step.parent_id is not None else None
