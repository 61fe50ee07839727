"""Bridges between LangChain's calling conventions and the async step pipeline:
sync entry points, callback emitters for tokens and step events, and streaming.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import os
import queue
import threading
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

from langchain_core.callbacks import (
    AsyncCallbackManager,
    AsyncCallbackManagerForLLMRun,
    CallbackManager,
    CallbackManagerForLLMRun,
)
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.outputs import ChatGenerationChunk
from langchain_core.runnables.config import RunnableConfig, ensure_config

from tidal_agents.engine.loop_thread import LoopThread
from tidal_agents.engine.types import TokenCallback
from tidal_agents.step import TIDAL_KEYS

#: the config of a direct stream()/astream() call: LangChain does not pass its run
#: manager to _stream/_astream there, and the step event still has to reach handlers
STREAM_RUN: contextvars.ContextVar[RunnableConfig | None] = contextvars.ContextVar(
    "tidal_stream_run", default=None
)
T = TypeVar("T")


def with_run_id(config: RunnableConfig | None) -> RunnableConfig:
    """A copy of `config` with the model run's id fixed in advance."""
    config = ensure_config(config)
    if config.get("run_id") is None:
        config["run_id"] = uuid.uuid4()
    return config


def emitter_for_stream(is_async: bool) -> Emitter:
    """An emitter for the model run of a direct stream() call (see STREAM_RUN)."""
    config = STREAM_RUN.get()
    if config is None:
        return AsyncEmitter(None)
    return RunEmitter(config, is_async)


def with_tidal_keys(config: RunnableConfig | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    configurable = (config or {}).get("configurable") or {}
    ours = {k: v for k, v in configurable.items()
            if str(k).startswith("tidal_") or k == "thread_id"}
    if not any(str(k).startswith("tidal_") for k in ours):
        return kwargs
    return {**kwargs, TIDAL_KEYS: ours}


class Emitter:
    async def token(self, text: str, chunk: ChatGenerationChunk) -> None: ...
    async def event(self, name: str, data: dict[str, Any]) -> None: ...

    @property
    def has_listeners(self) -> bool:
        """Whether `event` reaches any handler: when not, its payload need not be built."""
        return True


class AsyncEmitter(Emitter):
    def __init__(self, run_manager: AsyncCallbackManagerForLLMRun | None) -> None:
        self.rm = run_manager

    @property
    def has_listeners(self) -> bool:
        return self.rm is not None and bool(self.rm.handlers)

    async def token(self, text: str, chunk: ChatGenerationChunk) -> None:
        if self.rm is not None:
            await self.rm.on_llm_new_token(text, chunk=chunk)

    async def event(self, name: str, data: dict[str, Any]) -> None:
        if self.rm is not None:
            # Attributed to this model run, as adispatch_custom_event would do.
            manager = AsyncCallbackManager(
                handlers=self.rm.handlers, parent_run_id=self.rm.parent_run_id,
                tags=self.rm.tags, metadata=self.rm.metadata,
            )
            await manager.on_custom_event(name, data, run_id=self.rm.run_id)


class RunEmitter(Emitter):
    """Custom events for a run known only by its config (tokens go through LangChain)."""

    def __init__(self, config: RunnableConfig, is_async: bool) -> None:
        self.config, self.is_async = config, is_async

    async def token(self, text: str, chunk: ChatGenerationChunk) -> None:
        return None  # LangChain's stream() reports every chunk itself

    async def event(self, name: str, data: dict[str, Any]) -> None:
        args: dict[str, Any] = {
            "inheritable_callbacks": self.config.get("callbacks"),
            "inheritable_tags": self.config.get("tags"),
            "inheritable_metadata": self.config.get("metadata"),
        }
        run_id = self.config.get("run_id")
        if self.is_async:
            await AsyncCallbackManager.configure(**args).on_custom_event(
                name, data, run_id=run_id
            )
        else:
            CallbackManager.configure(**args).on_custom_event(name, data, run_id=run_id)


class SyncEmitter(Emitter):
    def __init__(self, run_manager: CallbackManagerForLLMRun | None) -> None:
        self.rm = run_manager

    @property
    def has_listeners(self) -> bool:
        return self.rm is not None and bool(self.rm.handlers)

    async def token(self, text: str, chunk: ChatGenerationChunk) -> None:
        if self.rm is not None:
            self.rm.on_llm_new_token(text, chunk=chunk)

    async def event(self, name: str, data: dict[str, Any]) -> None:
        if self.rm is not None:
            manager = CallbackManager(
                handlers=self.rm.handlers, parent_run_id=self.rm.parent_run_id,
                tags=self.rm.tags, metadata=self.rm.metadata,
            )
            manager.on_custom_event(name, data, run_id=self.rm.run_id)


class _ThreadLoop:
    """One thread's event loop for sync calls, kept between calls: a fresh
    ``asyncio.run`` per call costs milliseconds (a new loop, and in the main thread
    the SIGINT handler's swap, which formats the finished task's result)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()

    def __del__(self) -> None:  # the thread ended: close its loop quietly
        with contextlib.suppress(Exception):
            if not self.loop.is_running():
                self.loop.close()


_THREAD_LOOPS = threading.local()
#: where sync calls made inside a running event loop run (a notebook cell, an async
#: caller using the sync API): that loop cannot be re-entered
_NESTED_RUNNER: LoopThread | None = None
_NESTED_RUNNER_LOCK = threading.Lock()


def _thread_loop() -> asyncio.AbstractEventLoop:
    """This thread's loop for sync calls (a new one after a fork or a close)."""
    held: _ThreadLoop | None = getattr(_THREAD_LOOPS, "held", None)
    if held is None or held.pid != os.getpid() or held.loop.is_closed():
        held = _THREAD_LOOPS.held = _ThreadLoop()
    return held.loop


def _nested_runner() -> LoopThread:
    global _NESTED_RUNNER
    with _NESTED_RUNNER_LOCK:
        if _NESTED_RUNNER is None or _NESTED_RUNNER.loop.is_closed():
            _NESTED_RUNNER = LoopThread("tidal-sync-bridge")
        return _NESTED_RUNNER


def run_sync(factory: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion from sync code, inside or outside a loop.

    The coroutine runs in a copy of the caller's context (the current episode goes
    along). Interrupting the caller (Ctrl-C) cancels it.
    """
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        return _run_on_thread_loop(factory)
    # Sync code running inside a loop (e.g. a notebook): that loop is busy with the
    # caller, so the coroutine runs on a helper loop while the caller blocks.
    runner = _nested_runner()
    if running is runner.loop:  # a sync call from inside such a call
        return _run_on_new_thread(factory)
    future = runner.submit(_as_coroutine(factory))
    try:
        return future.result()
    except BaseException:
        future.cancel()
        raise


async def _as_coroutine(factory: Callable[[], Awaitable[T]]) -> T:
    return await factory()


def _run_on_thread_loop(factory: Callable[[], Awaitable[T]]) -> T:
    loop = _thread_loop()
    task = loop.create_task(_as_coroutine(factory))  # in a copy of this context
    try:
        return loop.run_until_complete(task)
    except BaseException:
        if not task.done():  # interrupted between the task's steps: cancel it
            task.cancel()
            with contextlib.suppress(BaseException):
                loop.run_until_complete(task)
        raise
    finally:
        _cancel_leftovers(loop)


def _run_on_new_thread(factory: Callable[[], Awaitable[T]]) -> T:
    context = contextvars.copy_context()
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = context.run(asyncio.run, _as_coroutine(factory))
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="tidal-sync-nested")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


def _cancel_leftovers(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what the call started and left running, as ``asyncio.run`` does at its
    end, so that nothing of this call runs during the next one."""
    leftovers = asyncio.all_tasks(loop)
    if not leftovers:
        return
    for task in leftovers:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))


def iterate_sync(factory: Callable[[], AsyncGenerator[Any, None]]) -> Iterator[Any]:
    """Iterate an async generator from sync code (on a helper thread's loop, in a
    copy of the caller's context)."""
    items: queue.Queue[tuple[str, Any]] = queue.Queue()
    cancel = threading.Event()

    async def pump() -> None:
        agen = factory()
        try:
            async for item in agen:
                items.put(("item", item))
                if cancel.is_set():
                    break
        finally:
            await agen.aclose()

    def target() -> None:
        try:
            context.run(asyncio.run, pump())
            items.put(("done", None))
        except BaseException as exc:  # surfaced in the consumer
            items.put(("error", exc))

    # threads start with an empty context: the stream runs in the caller's
    context = contextvars.copy_context()
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    try:
        while True:
            kind, value = items.get()
            if kind == "item":
                yield value
            elif kind == "error":
                raise value
            else:
                return
    finally:
        cancel.set()


async def stream_step(
    step: Callable[[TokenCallback], Awaitable[AIMessage]], emitter: Emitter
) -> AsyncGenerator[ChatGenerationChunk, None]:
    """Chunks of one step: text deltas as the engine produces them, then a last
    chunk with what was not streamed (a selected answer, tool calls), usage and
    metadata. `step(on_token)` runs the step."""
    loop = asyncio.get_running_loop()
    deltas: asyncio.Queue[str | None] = asyncio.Queue()

    def on_token(index: int, text: str) -> None:  # called on the engine's thread
        loop.call_soon_threadsafe(deltas.put_nowait, text)

    task = asyncio.ensure_future(step(on_token))
    task.add_done_callback(lambda _: loop.call_soon_threadsafe(deltas.put_nowait, None))
    streamed = ""
    try:
        while True:
            delta = await deltas.get()
            if delta is None:
                break
            streamed += delta
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=delta))
            await emitter.token(delta, chunk)
            yield chunk
        message = await task
    finally:
        if not task.done():
            task.cancel()
    content = message.content if isinstance(message.content, str) else ""
    rest = content[len(streamed):] if content.startswith(streamed) else content
    last = AIMessageChunk(
        content=rest,
        tool_call_chunks=[
            {"name": c["name"], "args": json.dumps(c["args"], ensure_ascii=False),
             "id": c["id"], "index": i, "type": "tool_call_chunk"}
            for i, c in enumerate(message.tool_calls)
        ],
        usage_metadata=message.usage_metadata,
        response_metadata=message.response_metadata,
        chunk_position="last",
    )
    if rest:
        await emitter.token(rest, ChatGenerationChunk(message=last))
    yield ChatGenerationChunk(message=last)
