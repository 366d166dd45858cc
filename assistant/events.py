"""What one turn reports, in order, to whoever renders it (Streamlit, the CLI, tests).

Events carry ids and numbers, never PIL images: the renderer reads pixels from storage, so
what is shown is always what was stored.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar


@dataclass(frozen=True)
class Event:
    kind: ClassVar[str] = "event"
    conversation_id: int

    def to_dict(self) -> dict[str, Any]:
        return {"event": self.kind, **asdict(self)}


@dataclass(frozen=True)
class PlanMade(Event):
    kind: ClassVar[str] = "plan"
    intent: str
    targets: list[int]
    instruction: str
    prompt: str
    negative_prompt: str
    params: dict[str, Any]
    backend: str
    model: str
    planner: str
    #: the LLM's tool call(s) that produced this plan, when an agent planned
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Progress(Event):
    kind: ClassVar[str] = "progress"
    step: int
    total: int


@dataclass(frozen=True)
class ImageReady(Event):
    kind: ClassVar[str] = "image"
    id: int
    number: int
    parent_id: int | None
    operation: str
    path: str


@dataclass(frozen=True)
class Reply(Event):
    kind: ClassVar[str] = "reply"
    text: str


@dataclass(frozen=True)
class Failed(Event):
    kind: ClassVar[str] = "error"
    message: str
    #: the user stopped the turn (a rerun, Ctrl-C, the cancel token): not a fault of anything
    cancelled: bool = False
