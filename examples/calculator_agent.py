"""A `create_agent` agent with two real tools, under an episode deadline.

Run: python examples/calculator_agent.py
"""

from __future__ import annotations

from calculator_tools import TOOLS
from langchain.agents import create_agent

from tidal_agents import TidalChatModel
from tidal_agents.integrations.langchain_middleware import ToolFirstMiddleware


def run(deadline_s: float = 60.0, question: str = "What is 12 times 7?") -> dict:
    model = TidalChatModel(max_tokens=64)
    agent = create_agent(
        model=model,
        tools=TOOLS,
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
