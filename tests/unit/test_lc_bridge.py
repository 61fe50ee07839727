"""Sync entry points over the async step: one kept loop per thread, the caller's
context carried along (the current episode), calls from inside a running loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import threading
from collections.abc import AsyncGenerator

import pytest

from tests.fakes import FakeEngine
from tidal_agents.chat_model import TidalChatModel
from tidal_agents.lc_bridge import iterate_sync, run_sync
from tidal_agents.strategies import StrategyConfig

MARK: contextvars.ContextVar[str | None] = contextvars.ContextVar("mark", default=None)


async def _mark_and_loop() -> tuple[str | None, asyncio.AbstractEventLoop]:
    await asyncio.sleep(0)
    return MARK.get(), asyncio.get_running_loop()


def test_run_sync_keeps_one_loop_per_thread_and_carries_the_context() -> None:
    token = MARK.set("caller")
    try:
        mark, first = run_sync(_mark_and_loop)
        _, second = run_sync(_mark_and_loop)
    finally:
        MARK.reset(token)
    assert mark == "caller"
    assert first is second and not first.is_closed()
    with pytest.raises(RuntimeError):  # nothing left running in this thread
        asyncio.get_running_loop()


def test_run_sync_raises_the_coroutines_error_and_still_works_after() -> None:
    async def fail() -> None:
        raise ValueError("bad step")

    with pytest.raises(ValueError, match="bad step"):
        run_sync(fail)
    assert run_sync(_mark_and_loop)[0] is None


def test_run_sync_cancels_what_the_call_left_running() -> None:
    cancelled = asyncio.Event()
    started: list[asyncio.Task[None]] = []

    async def forever() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def leaves_a_task() -> str:
        started.append(asyncio.ensure_future(forever()))
        await asyncio.sleep(0)
        return "done"

    assert run_sync(leaves_a_task) == "done"
    assert started[0].cancelled() and cancelled.is_set()


def test_run_sync_on_an_interrupt_cancels_the_call() -> None:
    steps: list[str] = []

    async def interrupted() -> None:
        steps.append("started")
        try:
            await asyncio.sleep(0)
            raise KeyboardInterrupt
        finally:
            steps.append("unwound")

    with pytest.raises(KeyboardInterrupt):
        run_sync(interrupted)
    assert steps == ["started", "unwound"]
    assert run_sync(_mark_and_loop)[0] is None  # the thread's loop still serves


def test_run_sync_from_many_threads_at_once() -> None:
    async def echo(i: int) -> tuple[int, int]:
        await asyncio.sleep(0.01)
        return i, threading.get_ident()

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: run_sync(lambda: echo(i)), range(16)))
    assert [i for i, _ in results] == list(range(16))


async def test_run_sync_inside_a_running_loop_carries_the_context() -> None:
    # a sync call made by code running in a loop (a notebook cell, an async caller)
    token = MARK.set("notebook")
    try:
        mark, loop = run_sync(_mark_and_loop)

        async def nested() -> str | None:
            # a sync call from inside such a call
            return run_sync(_mark_and_loop)[0]

        inner = run_sync(nested)
    finally:
        MARK.reset(token)
    assert mark == "notebook" and inner == "notebook"
    assert loop is not asyncio.get_running_loop()


def test_iterate_sync_carries_the_context() -> None:
    async def marks() -> AsyncGenerator[str | None, None]:
        for _ in range(2):
            yield MARK.get()

    token = MARK.set("stream")
    try:
        assert list(iterate_sync(marks)) == ["stream", "stream"]
    finally:
        MARK.reset(token)


def _model() -> TidalChatModel:
    model = TidalChatModel(strategy=StrategyConfig("single", temperature=0.0, max_tokens=8))
    model._engine = FakeEngine(replies=("four",))
    return model


def test_sync_invoke_and_stream_run_in_the_current_episode() -> None:
    model = _model()
    with model.episode(deadline_s=30) as ep:
        assert model.invoke("2+2?").content == "four"
        assert "".join(str(c.content) for c in model.stream("2+2?")) == "four"
    assert len(ep.trace.records) == 2


async def test_sync_invoke_inside_a_running_loop_runs_in_the_current_episode() -> None:
    model = _model()
    with model.episode(deadline_s=30) as ep:
        assert model.invoke("2+2?").content == "four"
    assert len(ep.trace.records) == 1


def test_the_step_event_is_built_only_for_a_listening_handler() -> None:
    from langchain_core.callbacks import BaseCallbackHandler

    from tidal_agents.chat_model import STEP_EVENT

    class Events(BaseCallbackHandler):
        def __init__(self) -> None:
            self.seen: list[tuple[str, dict]] = []

        def on_custom_event(self, name: str, data: dict, **kwargs: object) -> None:
            self.seen.append((name, data))

    model = _model()
    built: list[int] = []
    record_type = type(_model_record(model))
    dump = record_type.model_dump

    def counting_dump(self: object, **kwargs: object) -> dict:
        built.append(1)
        return dump(self, **kwargs)  # type: ignore[arg-type]

    handler = Events()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(record_type, "model_dump", counting_dump)
        model.invoke("2+2?")
        assert built == []  # nobody listens: no payload
        model.invoke("2+2?", config={"callbacks": [handler]})
    assert built == [1] and [name for name, _ in handler.seen] == [STEP_EVENT]
    assert handler.seen[0][1]["strategy"] == "greedy"


def _model_record(model: TidalChatModel) -> object:
    with model.episode(deadline_s=30) as ep:
        model.invoke("2+2?")
    return ep.trace.records[0]
