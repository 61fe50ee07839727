"""The create_agent middleware ties every model call of one invocation to one episode."""

from __future__ import annotations

from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage
from langchain_core.tools import tool

from tidal_agents.episode import current_episode
from tidal_agents.errors import TidalConfigError
from tidal_agents.integrations.langchain_middleware import (
    TidalEpisodeMiddleware,
    ToolFirstMiddleware,
)


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


class RecordingModel(GenericFakeChatModel):
    seen: list[Any] = []

    def bind_tools(self, tools: Any, **kwargs: Any) -> RecordingModel:
        return self

    def _generate(self, messages: Any, stop: Any = None, run_manager: Any = None, **kw: Any) -> Any:
        self.seen.append(current_episode())
        return super()._generate(messages, stop, run_manager, **kw)


def _call(i: int) -> AIMessage:
    return AIMessage("", tool_calls=[{"name": "add", "args": {"a": i, "b": 2}, "id": f"c{i}"}])


def _model() -> RecordingModel:
    return RecordingModel(messages=iter([_call(1), AIMessage("3")]), seen=[])


class ChoiceModel(RecordingModel):
    """Records the tool_choice of every bind_tools call."""

    choices: list[Any] = []

    def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
        self.choices.append(kwargs.get("tool_choice"))
        return self


def test_each_invocation_gets_its_own_episode() -> None:
    mw = TidalEpisodeMiddleware(deadline_s=30)
    episodes = []
    for _ in range(2):
        model = _model()
        agent = create_agent(model=model, tools=[add], middleware=[mw])
        agent.invoke({"messages": [("user", "1+2?")]})
        assert len(model.seen) == 2
        assert model.seen[0] is not None and model.seen[0] is model.seen[1]
        assert model.seen[0] is mw.last_episode
        episodes.append(model.seen[0])
    assert episodes[0] is not episodes[1]
    assert all(ep.finished for ep in episodes)
    assert current_episode() is None


def test_tool_first_forces_a_call_only_before_the_first_result() -> None:
    model = ChoiceModel(messages=iter([_call(1), AIMessage("3")]), seen=[], choices=[])
    agent = create_agent(model=model, tools=[add], middleware=[ToolFirstMiddleware()])
    agent.invoke({"messages": [("user", "1+2?")]})
    assert model.choices[0] == "any" and model.choices[1] in (None, "auto")


def test_tool_first_with_a_call_budget_forces_the_answer() -> None:
    model = ChoiceModel(messages=iter([_call(1), _call(2), AIMessage("4")]), seen=[], choices=[])
    agent = create_agent(model=model, tools=[add],
                         middleware=[ToolFirstMiddleware(max_tool_calls=2)])
    out = agent.invoke({"messages": [("user", "1+2, then 2+2?")]})
    choices = model.choices
    assert choices == ["any", None, "none"] or choices == ["any", "auto", "none"]
    assert out["messages"][-1].content == "4"
    for bad in (0, -1, True, 1.5, "2"):
        with pytest.raises(TidalConfigError, match="max_tool_calls"):
            ToolFirstMiddleware(max_tool_calls=bad)  # type: ignore[arg-type]
