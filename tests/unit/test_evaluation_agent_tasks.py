"""Agent tasks: tools, gold answers and grading (no engine)."""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

from tidal_agents.errors import TidalConfigError
from tidal_agents.evaluation import agent_tasks as at


def test_tools_compute() -> None:
    assert at.add(2, 3.5) == 5.5
    assert at.multiply(12, 7) == 84
    assert at.km_to_miles(42.195) == pytest.approx(26.22, abs=0.01)
    assert at.get_price("Apples") == 3.0
    with pytest.raises(ValueError, match="known items"):
        at.get_price("car")


def test_langchain_tools_run_and_report_errors() -> None:
    tools = {t.name: t for t in at.langchain_tools()}
    assert set(tools) == {"add", "multiply", "km_to_miles", "get_price"}
    assert tools["multiply"].invoke({"a": 6, "b": 7}) == 42
    assert "known items" in tools["get_price"].invoke({"item": "car"})  # back to the model
    with pytest.raises(TidalConfigError, match="unknown tools"):
        at.langchain_tools(("search",))


def test_tasks_gold_follows_the_plan() -> None:
    tasks = at.agent_tasks(25, seed=4)
    assert {t.kind for t in tasks} == set(at.AGENT_TASK_KINDS)
    assert at.agent_tasks(25, seed=4) == tasks
    for t in tasks:
        assert set(t.plan) <= set(t.tools)
        nums = [float(x) for x in __import__("re").findall(r"\d+", t.question)]
        assert t.expected_steps == len(t.plan) + 1
        if t.kind in ("multiply", "multiply-only"):
            assert t.gold == nums[0] * nums[1]
        elif t.kind == "add-multiply":
            assert t.gold == (nums[0] + nums[1]) * nums[2]
        elif t.kind == "add-only":
            assert t.gold == nums[0] + nums[1] and t.tools == ("add",)
        elif t.kind == "price-lookup":
            item = next(i for i in at.PRICES if i in t.question)
            assert t.gold == at.PRICES[item] and t.plan == ("get_price",)
        elif t.kind in ("convert", "convert-only"):
            assert t.gold == at.km_to_miles(nums[0])
        elif t.kind == "convert-add":
            assert t.gold == pytest.approx(at.km_to_miles(nums[0]) + nums[1])
        else:
            item = next(i for i in at.PRICES if i in t.question)
            assert t.gold == at.PRICES[item] * nums[0]
    with pytest.raises(TidalConfigError):
        at.agent_tasks(0)
    one = at.agent_tasks(12, seed=1, kinds=at.ONE_CALL_KINDS)
    assert {t.kind for t in one} == set(at.ONE_CALL_KINDS)
    assert all(len(t.plan) == 1 and t.expected_steps == 2 for t in one)
    for bad in ((), ("nope",)):
        with pytest.raises(TidalConfigError, match="kinds"):
            at.agent_tasks(3, kinds=bad)


def test_states_number() -> None:
    assert at.states_number("The answer is 1,234.", 1234)
    assert at.states_number("about 26.22 miles", 26.2188)
    assert not at.states_number("It is 12.", 84)
    assert not at.states_number("", 1)


def test_grade_messages() -> None:
    task = at.AgentTask("t", "What is 12 times 7?", ("multiply",), 84.0, ("multiply",), "m")
    call = AIMessage(content="", tool_calls=[{"name": "multiply", "args": {"a": 12, "b": 7},
                                              "id": "1"}])
    good = [HumanMessage("q"), call, ToolMessage("84", tool_call_id="1"), AIMessage("It is 84.")]
    g = at.grade_messages(task, good)
    assert g.success and g.tool_result_correct and g.tool_calls == ("multiply",)
    bad = [*good[:-1], AIMessage("It is 19.")]
    g = at.grade_messages(task, bad)
    assert not g.success and g.tool_result_correct
    unfinished = good[:2]
    assert not at.grade_messages(task, unfinished).success
