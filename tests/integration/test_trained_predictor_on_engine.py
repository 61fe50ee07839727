"""The default chat model's decisions are made by the shipped, trained predictor."""

from __future__ import annotations

from pathlib import Path

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool

from tidal_agents import TidalChatModel
from tidal_agents.engine import LocalVLLMEngine

pytestmark = pytest.mark.engine


@tool
def multiply(a: float, b: float) -> float:
    """Multiply two numbers."""
    return a * b


def test_text_and_tool_steps_are_decided_by_the_trained_predictor(
    engine: LocalVLLMEngine, tmp_path: Path
) -> None:
    model = TidalChatModel(max_tokens=16)
    assert model.accuracy_predictor.kind == "trained"
    with model.episode(deadline_s=120, trace_path=tmp_path / "trace.jsonl") as ep:
        model.invoke("What is 3 + 4?")
        model.bind_tools([multiply]).invoke("What is 12 times 7?")
        call = {"name": "multiply", "args": {"a": 12, "b": 7}, "id": "c1", "type": "tool_call"}
        model.bind_tools([multiply]).invoke([
            HumanMessage("What is 12 times 7?"), AIMessage("", tool_calls=[call]),
            ToolMessage("84.0", tool_call_id="c1", name="multiply"),
        ])
    records = ep.trace.records
    assert [r.features["answer_kind"] for r in records] == ["text", "tool_call", "tool_answer"]
    assert [r.decision["predictor_kind"] for r in records] == ["trained"] * 3
