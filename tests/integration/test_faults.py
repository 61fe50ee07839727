"""Faults on the real engine: each leaves a clear outcome and a complete trace."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
import pytest
from langchain.agents import create_agent
from langchain_core.messages import ToolMessage
from langchain_core.tools import tool

from tidal_agents import TidalChatModel
from tidal_agents.engine import EngineConfig, GenerationRequest, GenerationResult, LocalVLLMEngine
from tidal_agents.episode import overrun_bound_s
from tidal_agents.errors import TidalEngineError
from tidal_agents.integrations.langchain_middleware import (
    TidalEpisodeMiddleware,
    ToolFirstMiddleware,
)
from tidal_agents.strategies import StrategyConfig
from tidal_agents.trace import load_jsonl, read_jsonl

pytestmark = pytest.mark.engine
SINGLE = StrategyConfig("single", max_tokens=24)


class FailingEngine:
    """The real engine; the first `failures` requests are aborted after their first
    token (or hang, when `hang` is set) to inject a fault."""

    def __init__(self, inner: LocalVLLMEngine, failures: int = 1, hang: bool = False) -> None:
        self.inner, self.failures, self.hang = inner, failures, hang

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def generate(
        self, request: GenerationRequest, on_token: Callable[[int, str], None] | None = None
    ) -> GenerationResult:
        if self.failures <= 0:
            return await self.inner.generate(request, on_token)
        self.failures -= 1
        if self.hang:
            await asyncio.sleep(3600)  # ignores its timeout, like a stalled backend
        first = asyncio.Event()
        task = asyncio.ensure_future(self.inner.generate(
            request, lambda i, t: asyncio.get_running_loop() and first.set()
        ))
        await first.wait()
        task.cancel()  # the real request is aborted inside vLLM mid-generation
        raise TidalEngineError("injected fault: the engine failed mid-request")


def model_on(engine: Any, **kwargs: Any) -> TidalChatModel:
    model = TidalChatModel(strategy=SINGLE, max_tokens=24, **kwargs)
    model._engine = engine
    return model


async def test_engine_failing_mid_request_is_retried_and_traced(
    engine: LocalVLLMEngine, tmp_path: Path
) -> None:
    model = model_on(FailingEngine(engine, failures=1))
    trace = tmp_path / "t.jsonl"
    with model.episode(deadline_s=60, trace_path=str(trace)) as ep:
        answer = await model.ainvoke("What is 2 + 2?")
    assert answer.content
    (record,) = ep.trace.records
    assert record.error is None
    assert record.selection["engine_errors"] == ["injected fault: the engine failed mid-request"]
    assert read_jsonl(trace)[0].selection["engine_errors"] == record.selection["engine_errors"]
    assert engine.is_running


async def test_engine_that_keeps_failing_gives_a_typed_error_and_a_record(
    engine: LocalVLLMEngine, tmp_path: Path
) -> None:
    model = model_on(FailingEngine(engine, failures=10), max_retries=1)
    trace = tmp_path / "t.jsonl"
    with (
        model.episode(deadline_s=60, trace_path=str(trace)) as ep,
        pytest.raises(TidalEngineError, match="injected fault"),
    ):
        await model.ainvoke("What is 2 + 2?")
    (record,) = read_jsonl(trace)
    assert record.error is not None and "injected fault" in record.error
    assert ep.trace.records[0].error == record.error


async def test_hanging_engine_is_cut_off_after_its_allowance(
    engine: LocalVLLMEngine, tmp_path: Path
) -> None:
    model = model_on(FailingEngine(engine, failures=1, hang=True), max_retries=0)
    trace = tmp_path / "t.jsonl"
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with (
        model.episode(deadline_s=4, trace_path=str(trace)),
        pytest.raises(TidalEngineError, match="did not return within the step's allowance"),
    ):
        await model.ainvoke("What is 2 + 2?")
    assert loop.time() - t0 <= 4 + overrun_bound_s(4)  # the stated bound: no hang
    (record,) = read_jsonl(trace)
    assert record.error is not None and "allowance" in record.error


async def test_long_generation_past_its_allowance_returns_best_so_far(
    engine: LocalVLLMEngine, tmp_path: Path
) -> None:
    model = TidalChatModel(strategy=StrategyConfig("single", max_tokens=2000), max_tokens=2000)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    # one expected step: the whole 3 s (less the margin) is this step's allowance
    with model.episode(deadline_s=3, expected_steps=1,
                       trace_path=str(tmp_path / "t.jsonl")) as ep:
        answer = await model.ainvoke("Write a very long story about the sea, in many chapters.")
    assert loop.time() - t0 <= 3 + ep.overrun_bound_s
    assert answer.content  # what was generated before the cut
    assert answer.response_metadata["tidal"]["cut_short"] is True
    assert ep.trace.records[0].cut_short
    assert answer.response_metadata["finish_reason"] in ("timeout", "length")


def _descendants() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def _kill(pids: set[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


async def test_engine_process_death_restarts_within_the_bound_then_fails_clearly(
    engine: LocalVLLMEngine, tmp_path: Path
) -> None:
    before = _descendants()
    eng = LocalVLLMEngine(EngineConfig(max_restarts=2, restart_backoff_s=0.5))
    await asyncio.to_thread(eng.start)
    try:
        prompt = eng.apply_chat_template([{"role": "user", "content": "Tell a story."}])
        request = GenerationRequest(prompt=prompt, max_tokens=64, ignore_eos=True)
        ours = _descendants() - before
        assert ours
        task = asyncio.ensure_future(eng.generate(request))
        await asyncio.sleep(0.5)
        _kill(ours)  # the engine core and its worker die mid-request
        result = await task  # restarted, and the request ran again
        assert result.generated_tokens == 64
        assert eng.restarts == 1 and eng.is_running

        # dies again, inside a short episode: the restart takes longer than the whole
        # episode, which still returns by its deadline + B; the restart goes on
        _kill(_descendants() - before)
        model = model_on(eng, max_retries=1)
        started = time.monotonic()
        with model.episode(deadline_s=4.0) as short, pytest.raises(TidalEngineError):
            await model.ainvoke("Hello")
        assert time.monotonic() - started <= 4.0 + short.overrun_bound_s
        for _ in range(240):  # the restart finishes without any waiter
            if eng.restarts == 2 and eng.is_running:
                break
            await asyncio.sleep(0.5)
        assert eng.restarts == 2 and eng.is_running
        assert (await eng.generate(replace(request, max_tokens=4))).generated_tokens == 4

        _kill(_descendants() - before)  # dies again: the restart budget is spent
        trace = tmp_path / "t.jsonl"
        with (
            model.episode(deadline_s=60, trace_path=str(trace)),
            pytest.raises(TidalEngineError, match="restart budget"),
        ):
            await model.ainvoke("Hello")
        (record,) = read_jsonl(trace)
        assert record.error is not None and "restart budget" in record.error
    finally:
        await asyncio.to_thread(eng.shutdown)
    assert engine.is_running  # the shared engine never noticed


@tool
def unit_price(item: str) -> float:
    """Price of one item, in dollars."""
    raise RuntimeError(f"price service is down (asked for {item!r})")


def test_tool_raising_inside_an_agent_episode(tmp_path: Path) -> None:
    trace = tmp_path / "agent.jsonl"
    episodes = TidalEpisodeMiddleware(deadline_s=60, trace_path=str(trace))
    model = TidalChatModel(max_tokens=48)
    agent = create_agent(model=model, tools=[unit_price],
                         middleware=[episodes, ToolFirstMiddleware()])
    out = agent.invoke({"messages": [("user", "What does one apple cost?")]})
    errors = [m for m in out["messages"] if isinstance(m, ToolMessage) and m.status == "error"]
    assert errors and "price service is down" in str(errors[0].content)
    ep = episodes.last_episode
    assert ep is not None
    # the model may try the tool again with other arguments: one event per failure
    events = [e for e in ep.trace.events if e.event == "tool_error"]
    assert len(events) == len(errors) >= 1
    assert all(e.detail["tool"] == "unit_price" for e in events)
    assert "RuntimeError" in events[0].detail["error"]
    lines = load_jsonl(trace)
    assert len(lines) == len(ep.trace) + len(ep.trace.events)
    logged = [line["event"] for line in lines if "event" in line]
    assert logged.count("tool_error") == len(events)
    assert set(logged) <= {"tool_error", "tool_time"}  # tool time is recorded per call
    assert len(read_jsonl(trace)) == len(ep.trace) >= 2  # the model ran after the error


@tool
def slow_lookup(item: str) -> float:
    """Price of one item, in dollars, from a slow service."""
    time.sleep(30)
    return 1.0


def test_a_slow_tool_is_cut_off_and_the_episode_returns_by_its_bound(tmp_path: Path) -> None:
    deadline = 8.0
    episodes = TidalEpisodeMiddleware(deadline_s=deadline, trace_path=str(tmp_path / "t.jsonl"))
    model = TidalChatModel(max_tokens=32)
    agent = create_agent(model=model, tools=[slow_lookup],
                         middleware=[episodes, ToolFirstMiddleware(max_tool_calls=1)])
    started = time.monotonic()
    out = agent.invoke({"messages": [("user", "What does one apple cost?")]})
    wall = time.monotonic() - started
    assert wall <= deadline + overrun_bound_s(deadline)
    timeouts = [m for m in out["messages"] if isinstance(m, ToolMessage) and m.status == "error"]
    assert timeouts and "did not finish within" in str(timeouts[0].content)
    ep = episodes.last_episode
    assert ep is not None
    assert [e.event for e in ep.trace.events].count("tool_timeout") == len(timeouts)
