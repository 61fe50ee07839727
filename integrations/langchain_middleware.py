"""`create_agent` middleware: one tidal_agents episode per agent invocation.

    agent = create_agent(model=TidalChatModel(), tools=[...],
                         middleware=[TidalEpisodeMiddleware(deadline_s=30)])
    agent.invoke({"messages": [...]})          # each invoke gets its own deadline
    agent_middleware.last_episode.trace.print()

The episode's id travels in the agent state, so every model call of that
invocation (whatever thread or task LangGraph runs it on) finds its episode.
Works with any model: allocation happens only in TidalChatModel, but the
middleware is what ties the steps of one invocation to one deadline.

Tool calls are timed (each call's seconds teach the episode's per-tool means,
`Episode.observe_tool_time`) and bounded: a call may take the episode's time
above its safety margin less a reserve for the step that reads its result
(`Episode.tool_timeout_s`). A call that runs past it becomes an error
ToolMessage and a ``tool_timeout`` trace event. An async tool is cancelled; a
sync tool runs in a worker thread that cannot be killed, so it runs on in the
background and its result is discarded.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, NotRequired

from langchain.agents.middleware.types import (
    AgentMiddleware,
    AgentState,
    ModelRequest,
    ModelResponse,
    PrivateStateAttr,
    ToolCallRequest,
)
from langchain_core.messages import ToolMessage

from tidal_agents.episode import Episode, EpisodeRegistry, EpisodeSettings
from tidal_agents.validation import check_bool, check_int


class TidalEpisodeState(AgentState[Any]):
    tidal_episode_id: NotRequired[Annotated[str, PrivateStateAttr]]


class TidalEpisodeMiddleware(AgentMiddleware[TidalEpisodeState, Any]):
    """Starts an Episode when the agent starts and activates it around every model call."""

    state_schema = TidalEpisodeState

    def __init__(
        self,
        deadline_s: float,
        keep_last: int = 32,
        handle_tool_errors: bool = True,
        clock: Callable[[], float] = time.monotonic,
        tool_timeouts: bool = True,
        **episode_settings: Any,
    ) -> None:
        """`episode_settings`: the other fields of `EpisodeSettings` (``max_episode_tokens``
        ...), checked now (no episode and no trace file is made until the agent runs).
        `keep_last`: episodes kept for lookup, the oldest dropped. `handle_tool_errors`:
        a tool that raises becomes an error ToolMessage the model sees (and a
        ``tool_error`` trace event), instead of ending the run. `tool_timeouts`:
        bound each tool call by `Episode.tool_timeout_s` (calls are timed either way)."""
        super().__init__()
        self.settings = EpisodeSettings.from_kwargs({"deadline_s": deadline_s,
                                                     **episode_settings})
        check_int("keep_last", keep_last, lo=1)
        check_bool("handle_tool_errors", handle_tool_errors)
        check_bool("tool_timeouts", tool_timeouts)
        self.handle_tool_errors = handle_tool_errors
        self.tool_timeouts = tool_timeouts
        self.deadline_s = deadline_s
        self.keep_last = keep_last
        self.clock = clock
        self.episodes = EpisodeRegistry(keep_last)

    @property
    def last_episode(self) -> Episode | None:
        return self.episodes.last

    def before_agent(self, state: TidalEpisodeState, runtime: Any) -> dict[str, Any]:
        episode = Episode.from_settings(self.settings, clock=self.clock)
        self.episodes.add(episode)
        return {"tidal_episode_id": episode.id}

    async def abefore_agent(self, state: TidalEpisodeState, runtime: Any) -> dict[str, Any]:
        return self.before_agent(state, runtime)

    def after_agent(self, state: TidalEpisodeState, runtime: Any) -> None:
        episode = self._episode(state)
        if episode is not None:
            episode.finished = True

    async def aafter_agent(self, state: TidalEpisodeState, runtime: Any) -> None:
        self.after_agent(state, runtime)

    def _episode(self, state: Any) -> Episode | None:
        episode_id = state.get("tidal_episode_id") if isinstance(state, dict) else None
        return self.episodes.get(episode_id or None)

    def wrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], ModelResponse]
    ) -> ModelResponse:
        episode = self._episode(request.state)
        if episode is None:
            return handler(request)
        with episode.activate():
            return handler(request)

    async def awrap_model_call(
        self,
        request: ModelRequest,
        handler: Callable[[ModelRequest], Awaitable[ModelResponse]],
    ) -> ModelResponse:
        episode = self._episode(request.state)
        if episode is None:
            return await handler(request)
        with episode.activate():
            return await handler(request)


    def wrap_tool_call(
        self, request: ToolCallRequest, handler: Callable[[ToolCallRequest], Any]
    ) -> Any:
        episode = self._episode(request.state)
        timeout = self._tool_timeout(episode)
        if timeout is not None and timeout <= 0:
            return self._tool_timed_out(request, episode, timeout, started=False)
        started = time.perf_counter()
        try:
            if timeout is None:
                result = handler(request)
            else:
                result = _call_in_thread(handler, request, timeout)
        except _ToolTimedOut:
            self._observe(request, episode, started, timed_out=True)
            return self._tool_timed_out(request, episode, timeout)
        except Exception as exc:
            self._observe(request, episode, started)
            return self._tool_failed(request, exc)
        self._observe(request, episode, started)
        return result

    async def awrap_tool_call(
        self, request: ToolCallRequest, handler: Callable[[ToolCallRequest], Awaitable[Any]]
    ) -> Any:
        episode = self._episode(request.state)
        timeout = self._tool_timeout(episode)
        if timeout is not None and timeout <= 0:
            return self._tool_timed_out(request, episode, timeout, started=False)
        started = time.perf_counter()
        try:
            result = await _await_with_timeout(handler(request), timeout)
        except _ToolTimedOut:
            self._observe(request, episode, started, timed_out=True)
            return self._tool_timed_out(request, episode, timeout)
        except Exception as exc:
            self._observe(request, episode, started)
            return self._tool_failed(request, exc)
        self._observe(request, episode, started)
        return result

    def _tool_timeout(self, episode: Episode | None) -> float | None:
        """Seconds the tool call may take (None: unbounded)."""
        if episode is None or not self.tool_timeouts:
            return None
        return episode.tool_timeout_s()

    @staticmethod
    def _observe(
        request: ToolCallRequest, episode: Episode | None, started: float, timed_out: bool = False
    ) -> None:
        if episode is not None:
            episode.observe_tool_time(str(request.tool_call.get("name")),
                                      time.perf_counter() - started, timed_out=timed_out)

    @staticmethod
    def _tool_timed_out(
        request: ToolCallRequest, episode: Episode | None, timeout: float | None,
        started: bool = True,
    ) -> ToolMessage:
        call = request.tool_call
        name = call.get("name")
        seconds = max(0.0, timeout or 0.0)
        message = f"tool {name} did not finish within {seconds:.2f} s"
        if not started:
            message += " (not started: the episode has no time left for it)"
        if episode is not None:
            episode.record_event("tool_timeout", tool=name, tool_call_id=call.get("id"),
                                 timeout_s=seconds, started=started,
                                 remaining_s=episode.remaining_s(), message=message)
        return ToolMessage(
            content=f"Error: {message}. Answer with what you have.",
            tool_call_id=call.get("id") or "",
            name=name,
            status="error",
        )

    def _tool_failed(self, request: ToolCallRequest, exc: Exception) -> ToolMessage:
        call = request.tool_call
        episode = self._episode(request.state)
        if episode is not None:
            episode.record_event("tool_error", tool=call.get("name"), tool_call_id=call.get("id"),
                                 error=f"{type(exc).__name__}: {exc}",
                                 handled=self.handle_tool_errors)
        if not self.handle_tool_errors:
            raise exc
        return ToolMessage(
            content=f"Error: {type(exc).__name__}: {exc}. Fix the arguments or try another way.",
            tool_call_id=call.get("id") or "",
            name=call.get("name"),
            status="error",
        )


class _ToolTimedOut(Exception):
    """A tool call ran past its timeout (never raised by a tool itself)."""


def _call_in_thread(
    handler: Callable[[ToolCallRequest], Any], request: ToolCallRequest, timeout_s: float
) -> Any:
    """`handler(request)` in a daemon worker thread (with this context's variables),
    waited on for `timeout_s`. On timeout the thread runs on, since a thread cannot
    be killed, and its result or error is discarded."""
    context = contextvars.copy_context()
    outcome: dict[str, Any] = {}
    done = threading.Event()

    def work() -> None:
        try:
            outcome["result"] = context.run(handler, request)
        except BaseException as exc:  # handed to the waiting thread
            outcome["error"] = exc
        finally:
            done.set()

    threading.Thread(target=work, name="tidal-tool-call", daemon=True).start()
    if not done.wait(timeout_s):
        raise _ToolTimedOut
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


async def _await_with_timeout(call: Awaitable[Any], timeout_s: float | None) -> Any:
    """Await `call`, cancelling it after `timeout_s` (None: no limit). A tool's own
    TimeoutError stays the tool's error, not a timeout of ours."""
    if timeout_s is None:
        return await call
    task = asyncio.ensure_future(call)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout_s)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if not done:
        task.cancel()
        raise _ToolTimedOut
    return task.result()


class ToolFirstMiddleware(AgentMiddleware):
    """Forces a tool call on the first model step of an agent run, and (optionally)
    an answer once `max_tool_calls` tool results are in the conversation.

    Small models often answer from memory when a tool would be right; agents
    whose task always needs a tool can require one until the first tool result
    is in the conversation (then the model is free again: tool_choice "auto").
    They also tend to call tools again after the result is in; an agent that
    knows its task needs at most k calls passes ``max_tool_calls=k``, and from
    then on the model is asked with tool_choice "none", i.e. it must answer.
    """

    def __init__(self, max_tool_calls: int | None = None) -> None:
        super().__init__()
        check_int("max_tool_calls", max_tool_calls, lo=1, allow_none=True)
        self.max_tool_calls = max_tool_calls

    def _override(self, request: ModelRequest) -> ModelRequest:
        if not request.tools:
            return request
        results = sum(isinstance(m, ToolMessage) for m in request.messages)
        if results == 0:
            return request.override(tool_choice="any")
        if self.max_tool_calls is not None and results >= self.max_tool_calls:
            return request.override(tool_choice="none")
        return request

    def wrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], ModelResponse]
    ) -> ModelResponse:
        return handler(self._override(request))

    async def awrap_model_call(
        self,
        request: ModelRequest,
        handler: Callable[[ModelRequest], Awaitable[ModelResponse]],
    ) -> ModelResponse:
        return await handler(self._override(request))
