"""A `create_agent` agent with two real tools, under an episode deadline.

Run: python examples/calculator_agent.py
"""

from __future__ import annotations

from langchain.agents import create_agent
from langchain_core.tools import tool

from tidal_agents import TidalChatModel
from tidal_agents.integrations.langchain_middleware import ToolFirstMiddleware


@tool
def multiply(a: float, b: float) -> float:
    """Multiply two numbers."""
    return a * b


@tool
def km_to_miles(km: float) -> float:
    """Convert a distance in kilometres to miles."""
    return round(km * 0.621371, 3)


def run(deadline_s: float = 60.0, question: str = "What is 12 times 7?") -> dict:
    model = TidalChatModel(max_tokens=64)
    agent = create_agent(
        model=model,
        tools=[multiply, km_to_miles],
        system_prompt="Use a tool to compute, then give the answer.",
        # a 135M model answers from memory unless the first step must call a tool
        middleware=[ToolFirstMiddleware()],
    )
    with model.episode(deadline_s=deadline_s) as ep:
        result = agent.invoke({"messages": [("user", question)]}, {"recursion_limit": 8})
    return {"messages": result["messages"], "trace": ep.trace}


if __name__ == "__main__":
    out = run()
    for m in out["messages"]:
        m.pretty_print()
    out["trace"].print()
