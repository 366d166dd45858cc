"""Settings → the planner for each turn: the LLM agent when a chat model is configured, else rules."""

from __future__ import annotations

from typing import TYPE_CHECKING

from assistant.plan import Planner
from assistant.settings import Settings

if TYPE_CHECKING:
    from assistant.core import Assistant


def make_planner(settings: Settings, assistant: Assistant) -> tuple[Planner, str]:
    from assistant.offline_planner import OfflinePlanner

    return OfflinePlanner(), "offline"
