"""The one definition of a usable reply, and the four episode outcomes."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from langchain_core.messages import AIMessage, HumanMessage

from tidal_agents.trace.outcomes import (
    classify_episode,
    is_protocol_fragment,
    is_usable_reply,
    outcome_rates,
    trace_outcome,
    trace_summary,
)


@pytest.mark.parametrize(
    "text",
    ["{", '{"', '{"name', '{"name": "add", "argu', '{"answer": "84"}', '[{"name": "x"}]',
     ' {"tool_calls": []} '],
)
def test_tool_protocol_fragments_are_recognised(text: str) -> None:
    assert is_protocol_fragment(text)


@pytest.mark.parametrize(
    "text", ["84", "The answer is 84.", '{"city": "Bern"}', "[1, 2]", "{not json at the start"]
)
def test_answers_are_not_fragments(text: str) -> None:
    assert is_protocol_fragment(text) is (text == "{not json at the start")


def test_a_usable_reply_is_an_ai_message_with_real_content() -> None:
    assert is_usable_reply(AIMessage("84"))
    assert is_usable_reply(AIMessage([{"type": "text", "text": "84"}]))
    assert not is_usable_reply(AIMessage(""))
    assert not is_usable_reply(AIMessage("   "))
    assert not is_usable_reply(AIMessage('{"name'))
    assert not is_usable_reply(
        AIMessage("", invalid_tool_calls=[{"type": "invalid_tool_call", "name": None,
                                            "args": '{"na', "id": None, "error": "cut"}])
    )
    assert not is_usable_reply(HumanMessage("84"))
    assert not is_usable_reply(None)


@pytest.mark.parametrize("reason", ["length", "timeout", "abort"])
def test_a_truncated_reply_is_not_usable(reason: str) -> None:
    assert not is_usable_reply(AIMessage("The volume is 2", response_metadata={
        "finish_reason": reason}))
    assert is_usable_reply(AIMessage("The volume is 24.", response_metadata={
        "finish_reason": "stop"}))
    assert classify_episode(AIMessage("The volume is 2", response_metadata={
        "finish_reason": reason}), 3.0, 4.0, raised=False) == "no_usable_reply"


def test_episode_outcomes_split_four_ways() -> None:
    assert classify_episode(AIMessage("84"), 3.9, 4.0, raised=False) == "usable"
    assert classify_episode(AIMessage("{"), 3.9, 4.0, raised=False) == "no_usable_reply"
    assert classify_episode(None, 1.0, 4.0, raised=True) == "error"
    assert classify_episode(AIMessage("84"), 4.01, 4.0, raised=False) == "over_deadline"
    assert classify_episode(None, 4.5, 4.0, raised=True) == "over_deadline"


def test_outcome_rates_sum_to_one() -> None:
    rates = outcome_rates(["usable", "usable", "error", "no_usable_reply"])
    assert rates == {
        "usable_within_deadline_rate": 0.5, "no_usable_reply_rate": 0.25,
        "error_rate": 0.25, "over_deadline_rate": 0.0,
    }
    assert set(outcome_rates([]).values()) == {None}


def _record(finish: str, error: str | None = None, ended_at: float = 1.0) -> SimpleNamespace:
    return SimpleNamespace(finish=finish, error=error, ended_at=ended_at, cut_short=False,
                           spent=SimpleNamespace(generated_tokens=5))


def test_a_traces_outcome_is_read_from_its_steps() -> None:
    call, answer = _record("tool_call"), _record("answer", ended_at=3.0)
    assert trace_outcome([], 4.0, 0.0) is None
    assert trace_outcome([call, answer], 4.0, 0.0) == "usable"
    assert trace_outcome([call], 4.0, 0.0) == "no_usable_reply"
    cut = _record("answer", "no usable reply: the step was cut short", 3.0)
    assert trace_outcome([call, cut], 4.0, 0.0) == "no_usable_reply"
    assert trace_outcome([call, _record("truncated", ended_at=3.0)], 4.0, 0.0) == (
        "no_usable_reply")
    assert trace_outcome([call, _record("answer", "TidalEngineError: x")], 4.0, 0.0) == "error"
    assert trace_outcome([call, _record("answer", ended_at=4.5)], 4.0, 0.0) == "over_deadline"
    summary = trace_summary([call, answer], 4.0, 0.0)
    assert summary == {"steps": 2, "cut_short_steps": 0, "generated_tokens": 10, "wall_s": 3.0,
                       "deadline_s": 4.0, "outcome": "usable"}
