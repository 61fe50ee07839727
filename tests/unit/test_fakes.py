"""The shared test doubles behave as the tests that use them assume."""

from __future__ import annotations

import asyncio

import pytest
from fakes import FAKE_LOGPROB, FakeClock, FakeEngine
from langchain_core.messages import HumanMessage, SystemMessage

from tidal_agents.engine import Engine, GenerationRequest
from tidal_agents.errors import TidalEngineError
from tidal_agents.tool_protocol import to_chat_dicts


def test_fake_engine_is_an_engine() -> None:
    engine = FakeEngine()
    assert isinstance(engine, Engine)
    assert engine.start() is engine and engine.backend_id == "fake|test"


async def test_replies_cycle_one_per_sample_with_consistent_tokens() -> None:
    engine = FakeEngine(replies=("a b", "c"))
    seen: list[tuple[int, str]] = []
    result = await engine.generate(
        GenerationRequest("user: hi", n=3, logprobs=0), lambda i, t: seen.append((i, t))
    )
    assert [s.text for s in result.samples] == ["a b", "c", "a b"]
    assert seen == [(0, "a b"), (1, "c"), (2, "a b")]
    assert result.generated_tokens == sum(len(s.token_ids) for s in result.samples) == 5
    assert [engine.count_tokens(s.text) for s in result.samples] == [2, 1, 2]
    assert result.samples[0].logprobs == (FAKE_LOGPROB, FAKE_LOGPROB)
    assert all(s.finish_reason == "stop" for s in result.samples)
    assert result.prompt_tokens == engine.count_tokens("user: hi")
    assert engine.tokenizer.decode(result.samples[0].token_ids) == "a b"
    second = await engine.generate(GenerationRequest("x"))
    assert second.samples[0].text == "c" and engine.requests[1].prompt == "x"


async def test_replies_from_a_function_and_max_tokens() -> None:
    engine = FakeEngine(replies=lambda request: [f"echo {request.prompt}"])
    result = await engine.generate(GenerationRequest("one two", max_tokens=2))
    assert result.samples[0].text == "echo one" and result.samples[0].finish_reason == "length"


async def test_failures_then_success() -> None:
    engine = FakeEngine(fail_times=2)
    for _ in range(2):
        with pytest.raises(TidalEngineError):
            await engine.generate(GenerationRequest("p"))
    assert (await engine.generate(GenerationRequest("p"))).samples[0].text == "42"
    assert len(engine.requests) == 3


async def test_hang_ignores_the_timeout_until_cancelled() -> None:
    engine = FakeEngine(hang=True)
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(engine.generate(GenerationRequest("p", timeout_s=0.01)), 0.1)
    assert engine.in_flight_sequences == 0


async def test_delay_past_the_timeout_returns_a_timed_out_partial_reply() -> None:
    engine = FakeEngine(replies=("one two three four",), delay_s=0.2)
    result = await engine.generate(GenerationRequest("p", timeout_s=0.1))
    assert result.timed_out and result.samples[0].finish_reason == "timeout"
    assert result.samples[0].text == "one two"
    assert result.wall_s < 0.2


def test_chat_template_takes_the_tool_protocol_dicts() -> None:
    chat = to_chat_dicts([SystemMessage("be brief"), HumanMessage("hi")])
    assert FakeEngine().apply_chat_template(chat) == "system: be brief\nuser: hi\nassistant:"


def test_fake_clock_moves_only_when_told() -> None:
    clock = FakeClock(start=5.0)
    assert clock() == 5.0
    clock.advance(1.5)
    assert clock() == 6.5
