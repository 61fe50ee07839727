"""The same agent as a hand-built LangGraph graph; the deadline comes from config.

Run: python examples/langgraph_agent.py
"""

from __future__ import annotations

from typing import Any

from calculator_tools import TOOLS
from langchain_core.messages import AIMessage, ToolMessage
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode

from tidal_agents import TidalChatModel, episode_config


def build_graph(model: TidalChatModel) -> Any:
    llm = model.bind_tools(TOOLS)
    # a 135M model answers from memory unless the first step must call a tool
    llm_first = model.bind_tools(TOOLS, tool_choice="any")

    def call_model(state: MessagesState) -> dict[str, Any]:
        messages = state["messages"]
        first = not any(isinstance(m, ToolMessage) for m in messages)
        return {"messages": [(llm_first if first else llm).invoke(messages)]}

    def route(state: MessagesState) -> str:
        last = state["messages"][-1]
        return "tools" if isinstance(last, AIMessage) and last.tool_calls else END

    graph = StateGraph(MessagesState)
    graph.add_node("model", call_model)
    graph.add_node("tools", ToolNode(TOOLS))
    graph.add_edge(START, "model")
    graph.add_conditional_edges("model", route, ["tools", END])
    graph.add_edge("tools", "model")
    return graph.compile()


def run(deadline_s: float = 60.0, question: str = "What is 15 times 4?") -> dict:
    model = TidalChatModel(max_tokens=64)
    app = build_graph(model)
    # The episode is declared in RunnableConfig: no code change inside the graph.
    config = {**episode_config(deadline_s, "example-1"), "recursion_limit": 8}
    result = app.invoke({"messages": [("user", question)]}, config)
    return {"messages": result["messages"]}


if __name__ == "__main__":
    for m in run()["messages"]:
        m.pretty_print()
