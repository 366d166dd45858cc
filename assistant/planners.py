"""Settings → the planner for each turn: the LLM agent when a chat model is configured, else rules.

The agent is built lazily and talks to the network only when a turn runs, so choosing it costs
nothing at startup; when its endpoint is down, each turn falls back to the offline rules (or
fails, with ATELIER_CHAT_ON_FAILURE=fail) — see `assistant.agent`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from assistant.plan import Planner
from assistant.settings import Settings

if TYPE_CHECKING:
    from assistant.core import Assistant


def make_planner(settings: Settings, assistant: Assistant | None = None) -> tuple[Planner, str]:
    """(planner, name for PlanMade.planner): "llm:<model>" or "offline"."""
    from assistant.offline_planner import OfflinePlanner

    offline = OfflinePlanner()
    if settings.effective_chat_model:
        from assistant.agent import LLMAgent

        agent = LLMAgent(settings, fallback=offline)
        return agent, agent.name
    return offline, "offline"
