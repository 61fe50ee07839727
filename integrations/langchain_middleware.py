"""`create_agent` middleware: one tidal_agents episode per agent invocation.

    agent = create_agent(model=TidalChatModel(), tools=[...],
                         middleware=[TidalEpisodeMiddleware(deadline_s=30)])
    agent.invoke({"messages": [...]})          # each invoke gets its own deadline
    agent_middleware.last_episode.trace.print()

The episode's id travels in the agent state, so every model call of that
invocation (whatever thread or task LangGraph runs it on) finds its episode.
Works with any model: allocation happens only in TidalChatModel, but the
middleware is what ties the steps of one invocation to one deadline.
"""

from __future__ import annotations

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
        **episode_settings: Any,
    ) -> None:
        """`episode_settings`: the other fields of `EpisodeSettings`, checked now (no
        episode and no trace file is made until the agent runs). `keep_last`:
        episodes kept for lookup, the oldest dropped. `handle_tool_errors`: a tool
        that raises becomes an error ToolMessage the model sees (and a
        ``tool_error`` trace event), instead of ending the run."""
        super().__init__()
        self.settings = EpisodeSettings.from_kwargs({"deadline_s": deadline_s,
                                                     **episode_settings})
        check_int("keep_last", keep_last, lo=1)
        check_bool("handle_tool_errors", handle_tool_errors)
        self.handle_tool_errors = handle_tool_errors
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
        try:
            return handler(request)
        except Exception as exc:
            return self._tool_failed(request, exc)

    async def awrap_tool_call(
        self, request: ToolCallRequest, handler: Callable[[ToolCallRequest], Awaitable[Any]]
    ) -> Any:
        try:
            return await handler(request)
        except Exception as exc:
            return self._tool_failed(request, exc)

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
