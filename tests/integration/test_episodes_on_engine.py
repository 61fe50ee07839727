"""bench episodes' agent on the real engine: one tool call, then a forced answer, graded."""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

from tidal_agents import TidalChatModel
from tidal_agents.allocation import default_grid
from tidal_agents.bench import episodes as bench
from tidal_agents.evaluation.agent_tasks import ONE_CALL_KINDS, agent_tasks, langchain_tools

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def greedy() -> TidalChatModel:
    grid = {c.name: c for c in default_grid(max_tokens=48)}
    return TidalChatModel(max_tokens=48, strategy=grid["greedy"])


def test_tool_choice_none_with_tools_bound_answers_in_text(greedy: TidalChatModel) -> None:
    msgs = [
        SystemMessage(bench.SYSTEM_PROMPT), HumanMessage("How much does one book cost?"),
        AIMessage("", tool_calls=[{"name": "get_price", "args": {"item": "book"}, "id": "c1"}]),
        ToolMessage("12.0", tool_call_id="c1"),
    ]
    out = greedy.bind_tools(langchain_tools(("get_price",)), tool_choice="none").invoke(msgs)
    assert out.tool_calls == []
    assert out.content and not out.content.lstrip().startswith("{")  # the answer, not JSON
    assert out.response_metadata["finish_reason"] != "tool_calls"


def test_one_call_episodes_run_graded_within_their_deadline(greedy: TidalChatModel) -> None:
    adaptive = TidalChatModel(max_tokens=48)
    tasks = agent_tasks(2, seed=5, kinds=ONE_CALL_KINDS[:2])
    outcomes = [
        bench.run_episode(model, task, 20.0, name)
        for task in tasks for name, model in (("greedy", greedy), ("adaptive", adaptive))
    ]
    for o in outcomes:
        assert o.error is None, o.error
        assert o.outcome == "usable" and o.wall_s <= 20.0
        # a tool call first (ToolFirstMiddleware), then an answer (max_tool_calls=1)
        assert o.steps == 2 and len(o.tool_calls) == 1
        assert len(o.step_latency) == 2 and all(a > 0 for _, a in o.step_latency)
        assert o.tokens > 0 and o.final_text
    summary = bench.summarise(outcomes)
    assert set(summary["success_rate"]) == {"adaptive", "greedy"}
    assert summary["deadline_hit_rate"] == 1.0
    assert summary["adaptive_vs_best_static"]["20"]["best_static_success_rate"] is not None
