"""A `create_agent` agent under a deadline and a token budget, with one slow tool.

The episode learns how long the tool takes (a `tool_time` event in the trace),
bounds each call by the time that is left, and when too little time remains for
another tool round trip the next step answers with what it has (its decision
reason starts with "wrap-up").

Run: python examples/budgeted_agent.py
"""

from __future__ import annotations

import time

from langchain.agents import create_agent
from langchain_core.tools import tool

from tidal_agents import TidalChatModel
from tidal_agents.integrations.langchain_middleware import (
    TidalEpisodeMiddleware,
    ToolFirstMiddleware,
)


@tool
def price_lookup(item: str) -> float:
    """Price of one item in dollars, from a slow price service."""
    time.sleep(2.0)
    return {"apple": 0.5, "book": 12.0}.get(item.strip().lower(), 3.0)


def run(deadline_s: float = 6.0, max_episode_tokens: int = 600) -> dict:
    model = TidalChatModel(max_tokens=48)
    model.engine.start()  # the engine's one-time start is not episode time
    episodes = TidalEpisodeMiddleware(deadline_s=deadline_s,
                                      max_episode_tokens=max_episode_tokens)
    agent = create_agent(
        model=model,
        tools=[price_lookup],
        system_prompt="Look the price up with the tool, then answer with the price.",
        middleware=[episodes, ToolFirstMiddleware()],
    )
    result = agent.invoke({"messages": [("user", "What does one book cost?")]},
                          {"recursion_limit": 8})
    return {"messages": result["messages"], "trace": episodes.last_episode.trace}


if __name__ == "__main__":
    out = run()
    for m in out["messages"]:
        m.pretty_print()
    trace = out["trace"]
    trace.print()
    for event in trace.events:
        print(f"{event.event}: {event.detail}")
    for record in trace:
        print(f"step {record.step_index}: {record.decision['reason']}")
    print(f"generated tokens: {trace.tokens_used}")
