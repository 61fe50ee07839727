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

import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, NotRequired

from langchain.agents.middleware.types import (
    AgentMiddleware,
    AgentState,
    ModelRequest,
    ModelResponse,
    PrivateStateAttr,
)

from tidal_agents.episode import Episode


class TidalEpisodeState(AgentState[Any]):
    tidal_episode_id: NotRequired[Annotated[str, PrivateStateAttr]]


class TidalEpisodeMiddleware(AgentMiddleware[TidalEpisodeState, Any]):
    """Starts an Episode when the agent starts and activates it around every model call."""

    state_schema = TidalEpisodeState

    def __init__(self, deadline_s: float, keep_last: int = 32, **episode_kwargs: Any) -> None:
        super().__init__()
        Episode(deadline_s=deadline_s, **episode_kwargs)  # validate arguments now
        self.deadline_s = deadline_s
        self.episode_kwargs = episode_kwargs
        self.keep_last = keep_last
        self.episodes: OrderedDict[str, Episode] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def last_episode(self) -> Episode | None:
        with self._lock:
            return next(reversed(self.episodes.values()), None)

    def before_agent(self, state: TidalEpisodeState, runtime: Any) -> dict[str, Any]:
        episode = Episode(deadline_s=self.deadline_s, **self.episode_kwargs)
        with self._lock:
            self.episodes[episode.id] = episode
            while len(self.episodes) > self.keep_last:
                self.episodes.popitem(last=False)
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
        with self._lock:
            return self.episodes.get(episode_id) if episode_id else None

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


class ToolFirstMiddleware(AgentMiddleware):
    """Forces a tool call on the first model step of an agent run.

    Small models often answer from memory when a tool would be right; agents
    whose task always needs a tool can require one until the first tool result
    is in the conversation (then the model is free again: tool_choice "auto").
    """

    def _first_step(self, request: ModelRequest) -> bool:
        from langchain_core.messages import ToolMessage

        return bool(request.tools) and not any(
            isinstance(m, ToolMessage) for m in request.messages
        )

    def wrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], ModelResponse]
    ) -> ModelResponse:
        if self._first_step(request):
            request = request.override(tool_choice="any")
        return handler(request)

    async def awrap_model_call(
        self,
        request: ModelRequest,
        handler: Callable[[ModelRequest], Awaitable[ModelResponse]],
    ) -> ModelResponse:
        if self._first_step(request):
            request = request.override(tool_choice="any")
        return await handler(request)
