"""Loads `assistant/planner_cases.json` and checks plans against it, for every planner.

The table is data so that the offline planner and the LLM planner are held to the same
expectations: the LLM tests import `load_cases`, `build_context` and `check_plan` from here
and run the same rows against the agent (with a scripted or real chat model).

Schema (see the "schema" entry at the top of the JSON file for the same in prose):

    {"contexts": {name: CONTEXT}, "cases": [CASE, ...]}
    CONTEXT = {"images": [IMAGE, ...], "has_upload": bool, "has_mask": bool,
               "capabilities": [operation, ...], "backend_takes_negative_prompt": bool,
               "style": str | null, "verbatim": bool, "default_n": int, "max_n": int}
               (every key optional; {"base": name, ...} starts from a named context)
    IMAGE = {"number": int, "prompt": str, "operation": str = "generate",
             "parent_number": int | null = null, "instruction": str | null, "seed": int | null,
             "width": int = 512, "height": int = 512, "negative_prompt": str = "", "style": str | null}
             (id is 100 + number, so a planner that confuses ids with numbers fails)
    CASE = {"id": str, "text": str, "context": name | CONTEXT, "expect": EXPECT, "note": str?}
    EXPECT = {"intent": str, "targets": [int], "n": int, "transform": str | null,
              "transform_args": {..} (subset), "prompt_contains": [str], "prompt_not_contains": [str],
              "prompt_equals": str, "prompt_starts_with": str, "negative_contains": [str],
              "negative_empty": bool, "reply_contains": [str], "strength": [lo, hi], "verbatim": bool,
              "seed": int | null, "new_seed": bool, "question_kind": str, "style": str | null,
              "operation": str, "use_upload": bool, "styles": [str]}
              (only "intent" is required; absent keys are not checked; text checks ignore case;
              "styles": one picture per style, in order, as the plan's alternatives)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from assistant.plan import ImageInfo, Plan, PlannerContext
from tools.base import BACKEND_OPERATIONS, Operation

CASES_PATH = Path(__file__).resolve().parents[2] / "assistant" / "planner_cases.json"


def load_table(path: Path = CASES_PATH) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def load_cases(path: Path = CASES_PATH) -> list[dict[str, Any]]:
    """The cases with each context resolved to a plain dict (named contexts expanded)."""
    table = load_table(path)
    contexts: Mapping[str, Any] = table.get("contexts", {})
    cases = []
    for case in table["cases"]:
        cases.append({**case, "context": _resolve_context(case.get("context", {}), contexts)})
    return cases


def _resolve_context(spec: Any, contexts: Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(spec, str):
        spec = {"base": spec}
    spec = dict(spec)
    base = spec.pop("base", None)
    if base is None:
        return spec
    return {**_resolve_context(contexts[base], contexts), **spec}


def build_image(compact: Mapping[str, Any]) -> ImageInfo:
    number = int(compact["number"])
    return ImageInfo(
        number=number,
        id=100 + number,
        operation=str(compact.get("operation", "generate")),
        parent_number=compact.get("parent_number"),
        prompt=str(compact.get("prompt", "")),
        instruction=compact.get("instruction"),
        width=int(compact.get("width", 512)),
        height=int(compact.get("height", 512)),
        seed=compact.get("seed", number),
        negative_prompt=str(compact.get("negative_prompt", "")),
        style=compact.get("style"),
    )


def build_context(compact: Mapping[str, Any]) -> PlannerContext:
    """A PlannerContext from the compact JSON form."""
    caps = compact.get("capabilities")
    capabilities = frozenset(Operation(c) for c in caps) if caps is not None else BACKEND_OPERATIONS
    images = tuple(sorted((build_image(i) for i in compact.get("images", [])), key=lambda i: i.number))
    return PlannerContext(
        images=images,
        has_upload=bool(compact.get("has_upload", False)),
        has_mask=bool(compact.get("has_mask", False)),
        capabilities=capabilities,
        backend_takes_negative_prompt=bool(compact.get("backend_takes_negative_prompt", True)),
        style=compact.get("style"),
        verbatim=bool(compact.get("verbatim", False)),
        default_n=int(compact.get("default_n", 1)),
        max_n=int(compact.get("max_n", 4)),
    )


def check_plan(plan: Plan, expect: Mapping[str, Any]) -> list[str]:
    """Every way `plan` differs from `expect`, as readable lines; empty when it matches."""
    problems: list[str] = []

    def differ(key: str, got: Any, want: Any) -> None:
        problems.append(f"{key}: got {got!r}, want {want!r}")

    if plan.intent.value != expect["intent"]:
        differ("intent", plan.intent.value, expect["intent"])
    if "targets" in expect and list(plan.targets) != list(expect["targets"]):
        differ("targets", list(plan.targets), expect["targets"])
    for key in ("n", "transform", "verbatim", "seed", "new_seed", "question_kind", "style", "use_upload"):
        if key in expect and getattr(plan, key) != expect[key]:
            differ(key, getattr(plan, key), expect[key])
    if "operation" in expect:
        got = plan.operation.value if plan.operation is not None else None
        if got != expect["operation"]:
            differ("operation", got, expect["operation"])
    for key, want in expect.get("transform_args", {}).items():
        value: Any = plan.transform_args.get(key)
        value = list(value) if isinstance(value, tuple) else value
        if value != want:
            differ(f"transform_args.{key}", value, want)
    prompt, negative, reply = plan.prompt.lower(), plan.negative_prompt.lower(), (plan.reply or "").lower()
    for word in expect.get("prompt_contains", []):
        if word.lower() not in prompt:
            differ("prompt_contains", plan.prompt, word)
    for word in expect.get("prompt_not_contains", []):
        if word.lower() in prompt:
            differ("prompt_not_contains", plan.prompt, word)
    if "prompt_equals" in expect and plan.prompt != expect["prompt_equals"]:
        differ("prompt_equals", plan.prompt, expect["prompt_equals"])
    if "prompt_starts_with" in expect and not prompt.startswith(expect["prompt_starts_with"].lower()):
        differ("prompt_starts_with", plan.prompt, expect["prompt_starts_with"])
    for word in expect.get("negative_contains", []):
        if word.lower() not in negative:
            differ("negative_contains", plan.negative_prompt, word)
    if expect.get("negative_empty") and plan.negative_prompt:
        differ("negative_empty", plan.negative_prompt, "")
    for word in expect.get("reply_contains", []):
        if word.lower() not in reply:
            differ("reply_contains", plan.reply, word)
    if "styles" in expect and [a.get("style") for a in plan.alternatives] != expect["styles"]:
        differ("styles", [a.get("style") for a in plan.alternatives], expect["styles"])
    if "strength" in expect:
        lo, hi = expect["strength"]
        if plan.strength is None or not lo <= plan.strength <= hi:
            differ("strength", plan.strength, [lo, hi])
    return problems
