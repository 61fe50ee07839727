"""Episode budgets beside the deadline: tool time (measured, learned, reserved,
bounded by the middleware) and a token budget per episode."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fakes import FakeClock
from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import tool

from tidal_agents.allocation import CostModel, PriorAccuracyPredictor, StepFeatures
from tidal_agents.allocation.controller import StepDecision, decide
from tidal_agents.allocation.grid import default_grid
from tidal_agents.allocation.tool_time import DEFAULT_TOOL_TIME_S, TOOL_TIMES, ToolTimes
from tidal_agents.episode import Episode, EpisodeSettings, allowance_for, episode_config
from tidal_agents.errors import EpisodeDeadlineExceeded, TidalConfigError
from tidal_agents.integrations.langchain_middleware import TidalEpisodeMiddleware
from tidal_agents.trace.records import Spent, StepRecord


@pytest.fixture(autouse=True)
def _fresh_tool_times() -> Iterator[None]:
    """The process-wide table is shared: start and leave every test with it empty."""
    TOOL_TIMES.clear()
    yield
    TOOL_TIMES.clear()


def _features(step: int = 0, tools: int = 0) -> StepFeatures:
    return StepFeatures.from_text("What is 2 + 3?", prompt_tokens=40, step_index=step,
                                  tools_bound=tools)


def _step(ep: Episode, index: int, *, tools: tuple[str, ...] = (), tokens: int = 10,
          seconds: float = 0.5) -> StepRecord:
    """A recorded step that called `tools` and generated `tokens`."""
    t0 = time.time()
    return StepRecord(
        episode_id=ep.id, step_index=index, started_at=t0, ended_at=t0 + seconds,
        decision={}, strategy="single", n=1,
        spent=Spent(generated_tokens=tokens, engine_calls=1, wall_s=seconds),
        finish="tool_call" if tools else "answer", tool_calls=list(tools),
    )


def _events(ep: Episode, name: str) -> list[dict[str, Any]]:
    return [e.detail for e in ep.trace.events if e.event == name]


# ------------------------------------------------------------------ tool time
def test_the_allowance_reserves_the_tool_rounds_after_the_step() -> None:
    # 12 s, 3 steps: this one and two more, with one tool round (1 s) before each
    assert allowance_for(12.0, 0, 3, 0.0, tool_round_s=1.0) == pytest.approx(10.0 / 3)
    assert allowance_for(12.0, 2, 3, 0.0, tool_round_s=1.0) == 12.0  # the last: no round after
    # the reserve never takes more than half the usable time
    assert allowance_for(4.0, 0, 3, 0.0, tool_round_s=10.0) == pytest.approx(2.0 / 3)
    assert allowance_for(12.0, 0, 3, 0.0, tool_round_s=math.nan) == 4.0
    assert allowance_for(12.0, 0, 3, 0.0) == 4.0  # no tools: as before
    clock = FakeClock()
    ep = Episode(deadline_s=12.0, expected_steps=3, safety_margin_s=0.0, clock=clock)
    assert ep.allowance_s() == 4.0  # no tools bound, none seen: nothing reserved
    assert ep.tool_round_s(tools_bound=True) == DEFAULT_TOOL_TIME_S
    assert ep.allowance_s(tools_bound=True) == pytest.approx((12.0 - 2 * 0.5) / 3)


def test_tool_time_is_measured_between_steps_and_learned_per_tool() -> None:
    clock = FakeClock()
    ep = Episode(deadline_s=60.0, expected_steps=4, safety_margin_s=0.0, clock=clock)
    assert ep.next_step_index() == 0
    clock.advance(1.0)
    ep.record(_step(ep, 0, tools=("search",)))
    clock.advance(2.0)  # the tool runs
    assert ep.next_step_index() == 1
    (event,) = _events(ep, "tool_time")
    assert event["tools"] == ["search"] and event["seconds"] == pytest.approx(2.0)
    assert event["predicted_s"] == DEFAULT_TOOL_TIME_S and event["measured_by"] == "gap"
    assert ep.tool_time_s("search") == pytest.approx(2.0)  # the first replaces the prior
    assert TOOL_TIMES.known("search") == pytest.approx(2.0)
    # the next step now reserves the learned time for each round after it
    assert ep.tool_round_s() == pytest.approx(2.0)
    assert ep.allowance_s() == pytest.approx((57.0 - 2 * 2.0) / 3)
    # a second round moves the mean by the learning rate
    ep.record(_step(ep, 1), tool_calls=["search"])
    clock.advance(1.0)
    ep.next_step_index()
    assert ep.tool_time_s("search") == pytest.approx(2.0 + 0.3 * (1.0 - 2.0))
    # a step that called no tool is followed by no tool time
    ep.record(_step(ep, 2))
    clock.advance(30.0)
    ep.next_step_index()
    assert len(_events(ep, "tool_time")) == 2
    # a new episode starts from what earlier ones measured
    fresh = Episode(deadline_s=10.0)
    assert fresh.tool_time_s("search") == pytest.approx(1.7)
    assert fresh.tool_time_s("never_seen") == DEFAULT_TOOL_TIME_S
    assert fresh.predicted_tool_s(["search", "never_seen"]) == pytest.approx(2.2)
    assert fresh.predicted_tool_s() == pytest.approx(1.7)  # a round, with tools bound


def test_one_gap_is_split_over_the_calls_by_their_predictions() -> None:
    clock = FakeClock()
    TOOL_TIMES.update("fast", 1.0)
    TOOL_TIMES.update("slow", 3.0)
    ep = Episode(deadline_s=60.0, clock=clock)
    ep.record(_step(ep, 0, tools=("fast", "slow")))
    clock.advance(8.0)
    ep.next_step_index()
    assert ep.tool_time_s("fast") == pytest.approx(1.0 + 0.3 * (2.0 - 1.0))
    assert ep.tool_time_s("slow") == pytest.approx(3.0 + 0.3 * (6.0 - 3.0))
    (event,) = _events(ep, "tool_time")
    assert event["predicted_s"] == pytest.approx(4.0)


def test_an_exact_measurement_is_not_counted_twice() -> None:
    clock = FakeClock()
    ep = Episode(deadline_s=60.0, clock=clock)
    ep.record(_step(ep, 0, tools=("lookup",)))
    ep.observe_tool_time("lookup", 0.25)
    clock.advance(5.0)  # the graph was slow: not the tool's time
    ep.next_step_index()
    assert ep.tool_time_s("lookup") == pytest.approx(0.25)
    (event,) = _events(ep, "tool_time")
    assert event["measured_by"] == "middleware" and event["seconds"] == pytest.approx(5.0)
    assert event["calls"] == [{"tool": "lookup", "seconds": 0.25, "timed_out": False}]


def test_a_timed_out_call_only_raises_the_mean() -> None:
    times = ToolTimes()
    times.update("t", 2.0)
    assert times.update("t", 1.0, censored=True) == 2.0
    assert times.update("t", 5.0, censored=True) == 5.0
    assert times.update("t", -1.0) == 5.0 and times.update("t", math.nan) == 5.0
    with pytest.raises(TidalConfigError, match="prior_s"):
        ToolTimes(prior_s=-1)


def test_the_upper_tool_time_covers_a_slow_call() -> None:
    times = ToolTimes(prior_s=0.5)
    # never measured: the prior plus two deviations of half of it
    assert times.upper_seconds("t") == pytest.approx(0.5 + 2 * 0.25)
    times.update("t", 0.8)
    assert times.upper_seconds("t") == pytest.approx(0.8 + 2 * 0.4)
    times.update("t", 1.4)  # deviation: the first |measurement - mean|
    mean = 0.8 + 0.3 * 0.6
    assert times.seconds("t") == pytest.approx(mean)
    assert times.upper_seconds("t") == pytest.approx(mean + 2 * 0.6)
    times.update("t", 0.2)
    deviation = 0.6 + 0.3 * (abs(0.2 - mean) - 0.6)
    mean += 0.3 * (0.2 - mean)
    assert times.upper_seconds("t") == pytest.approx(mean + 2 * deviation)
    # a steady tool: the reserve shrinks toward its mean
    steady = ToolTimes()
    for _ in range(30):
        steady.update("s", 1.0)
    assert steady.upper_seconds("s") == pytest.approx(1.0)


def test_an_episode_reserves_the_slowest_upper_time_of_its_tools() -> None:
    clock = FakeClock()
    TOOL_TIMES.update("steady", 1.0)
    TOOL_TIMES.update("steady", 1.0)
    TOOL_TIMES.update("jumpy", 0.5)
    TOOL_TIMES.update("jumpy", 1.5)
    ep = Episode(deadline_s=60.0, clock=clock)
    # no call seen yet: the process-wide mean of the upper times
    assert ep.tool_round_upper_s(tools_bound=False) == 0.0
    jumpy = 0.5 + 0.3 * 1.0 + 2 * 1.0
    assert ep.tool_round_upper_s(tools_bound=True) == pytest.approx((1.0 + jumpy) / 2)
    ep.record(_step(ep, 0, tools=("steady", "jumpy")))
    assert ep.tool_round_upper_s() == pytest.approx(jumpy)
    assert ep.tool_round_s() < ep.tool_round_upper_s()


def test_tool_timeout_leaves_a_step_after_the_tool() -> None:
    clock = FakeClock()
    ep = Episode(deadline_s=10.0, expected_steps=2, safety_margin_s=0.5, clock=clock)
    # before any step: an equal share of the usable time is kept for the next step
    assert ep.tool_timeout_s() == pytest.approx(9.5 - 9.5 / 2)
    ep.record(_step(ep, 0, seconds=2.0))
    clock.advance(2.0)
    assert ep.tool_timeout_s() == pytest.approx(8.0 - 0.5 - 2.0)
    clock.advance(7.0)
    assert ep.tool_timeout_s() == 0.0


# ---------------------------------------------------------------- token budget
@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "10", math.inf])
def test_max_episode_tokens_is_checked(bad: Any) -> None:
    with pytest.raises(TidalConfigError, match="max_episode_tokens"):
        EpisodeSettings(deadline_s=10, max_episode_tokens=bad)
    with pytest.raises(TidalConfigError, match=r"tidal_max_episode_tokens.*max_episode_tokens"):
        Episode.from_config({"tidal_deadline_s": 10, "tidal_max_episode_tokens": bad})
    with pytest.raises(TidalConfigError, match="max_episode_tokens"):
        TidalEpisodeMiddleware(deadline_s=10, max_episode_tokens=bad)


def test_max_episode_tokens_through_each_entry_point() -> None:
    config = episode_config(10, "e1", max_episode_tokens=500)
    assert config["configurable"]["tidal_max_episode_tokens"] == 500
    ep = Episode.from_config(config["configurable"])
    assert ep is not None and ep.max_episode_tokens == 500 and ep.tokens_left() == 500
    assert Episode(deadline_s=10).tokens_left() is None
    mw = TidalEpisodeMiddleware(deadline_s=10, max_episode_tokens=64)
    assert mw.settings.max_episode_tokens == 64


def test_the_controller_keeps_to_the_tokens_left() -> None:
    grid = default_grid()
    cm, pred = CostModel.default(), PriorAccuracyPredictor()
    free = decide(_features(), grid, cm, pred, 0.0, 0.0, math.inf)
    assert free.tokens_left is None and free.to_dict()["tokens_left"] is None
    tokens = sorted({c.tokens for c in free.candidates})
    assert len(tokens) > 1
    left = tokens[len(tokens) // 2]
    some = decide(_features(), grid, cm, pred, 0.0, 0.0, math.inf, max_tokens_left=left)
    assert some.any_fits and some.predicted_tokens <= left
    assert all(c.fits == (c.tokens <= left) for c in some.candidates)
    assert some.to_dict()["tokens_left"] == left and "tokens left" in some.reason
    none = decide(_features(), grid, cm, pred, 0.0, 0.0, math.inf, max_tokens_left=1)
    assert not none.any_fits and none.predicted_tokens == tokens[0]
    assert "none fits the token budget (1 tokens left)" in none.reason
    with pytest.raises(TidalConfigError, match="max_tokens_left"):
        decide(_features(), grid, cm, pred, 0.0, 0.0, math.inf, max_tokens_left=math.nan)


def test_the_episode_counts_generated_tokens_and_decides_with_what_is_left() -> None:
    clock = FakeClock()
    ep = Episode(deadline_s=60.0, max_episode_tokens=1000, clock=clock)
    ep.record(_step(ep, 0, tokens=700))
    assert ep.tokens_used == ep.trace.tokens_used == 700 and ep.tokens_left() == 300
    decision = ep.decide(_features(1), CostModel.default(), PriorAccuracyPredictor())
    assert decision.tokens_left == 300
    assert decision.predicted_tokens <= 300 or not decision.any_fits


def test_a_spent_token_budget_raises_like_a_passed_deadline() -> None:
    ep = Episode(deadline_s=60.0, max_episode_tokens=100, clock=FakeClock())
    ep.record(_step(ep, 0, tokens=100))
    with pytest.raises(EpisodeDeadlineExceeded, match="max_episode_tokens=100 is spent"):
        ep.decide(_features(1), CostModel.default(), PriorAccuracyPredictor())
    assert ep.finished
    (event,) = _events(ep, "token_budget_exceeded")
    assert event["tokens_used"] == 100


def test_a_spent_token_budget_falls_back_to_the_cheapest_in_tokens() -> None:
    clock = FakeClock()
    ep = Episode(deadline_s=60.0, max_episode_tokens=100, on_deadline="fallback",
                 fallback_allowance_s=0.5, clock=clock)
    ep.record(_step(ep, 0, tokens=150))
    decision: StepDecision = ep.decide(_features(1), CostModel.default(),
                                       PriorAccuracyPredictor())
    cheapest = min(c.tokens for c in decision.candidates)
    assert decision.predicted_tokens == cheapest and not decision.any_fits
    assert decision.tokens_left == -50 and decision.allowance_s == ep.allowance_s()
    assert "token budget spent (max_episode_tokens=100, 150 used)" in decision.reason
    clock.advance(60.0)  # and past the deadline too: the fallback allowance
    late = ep.decide(_features(2), CostModel.default(), PriorAccuracyPredictor())
    assert late.allowance_s == 0.5 and late.predicted_tokens == cheapest
    assert late.reason.startswith("deadline passed and token budget spent")


# ------------------------------------------------------------------ middleware
class _Model(GenericFakeChatModel):
    def bind_tools(self, tools: Any, **kwargs: Any) -> _Model:
        return self


def _call(name: str) -> AIMessage:
    return AIMessage("", tool_calls=[{"name": name, "args": {"x": 1}, "id": "c1"}])


_release = threading.Event()


@tool
def slow_sync(x: int) -> str:
    """A tool that hangs until released."""
    _release.wait(10)
    return "late"


@tool
async def slow_async(x: int) -> str:
    """An async tool that takes ten seconds."""
    await asyncio.sleep(10)
    return "late"


@tool
def quick(x: int) -> str:
    """A tool that answers in 50 ms."""
    time.sleep(0.05)
    return "done"


def _timed_out_reply(out: dict[str, Any]) -> ToolMessage:
    (reply,) = [m for m in out["messages"] if isinstance(m, ToolMessage)]
    return reply


def test_a_slow_sync_tool_is_cut_at_its_timeout() -> None:
    _release.clear()
    mw = TidalEpisodeMiddleware(deadline_s=1.0, expected_steps=2)
    model = _Model(messages=iter([_call("slow_sync"), AIMessage("gave up")]))
    agent = create_agent(model=model, tools=[slow_sync], middleware=[mw])
    t0 = time.perf_counter()
    out = agent.invoke({"messages": [("user", "go")]})
    took = time.perf_counter() - t0
    _release.set()  # the worker thread finishes; its result is discarded
    reply = _timed_out_reply(out)
    assert reply.status == "error" and "tool slow_sync did not finish within" in reply.content
    assert out["messages"][-1].content == "gave up"
    episode = mw.last_episode
    assert episode is not None
    (event,) = _events(episode, "tool_timeout")
    assert event["tool"] == "slow_sync" and event["started"] is True
    assert 0 < event["timeout_s"] < 1.0 and took < 1.0
    assert episode.tool_time_s("slow_sync") >= event["timeout_s"]  # a lower bound


def test_a_slow_async_tool_is_cancelled_at_its_timeout() -> None:
    mw = TidalEpisodeMiddleware(deadline_s=1.0, expected_steps=2)
    model = _Model(messages=iter([_call("slow_async"), AIMessage("gave up")]))
    agent = create_agent(model=model, tools=[slow_async], middleware=[mw])
    t0 = time.perf_counter()
    out = asyncio.run(agent.ainvoke({"messages": [("user", "go")]}))
    assert time.perf_counter() - t0 < 1.0
    reply = _timed_out_reply(out)
    assert reply.status == "error" and "tool slow_async did not finish within" in reply.content
    assert mw.last_episode is not None and _events(mw.last_episode, "tool_timeout")


def test_a_tool_in_time_is_timed_exactly() -> None:
    mw = TidalEpisodeMiddleware(deadline_s=30.0)
    model = _Model(messages=iter([_call("quick"), AIMessage("ok")]))
    agent = create_agent(model=model, tools=[quick], middleware=[mw])
    out = agent.invoke({"messages": [("user", "go")]})
    assert _timed_out_reply(out).content == "done"
    episode = mw.last_episode
    assert episode is not None and not _events(episode, "tool_timeout")
    assert 0.04 <= episode.tool_time_s("quick") < 1.0
    assert TOOL_TIMES.known("quick") == episode.tool_time_s("quick")


def test_no_tool_starts_when_the_episode_has_no_time_for_it() -> None:
    clock = FakeClock()
    ran: list[bool] = []

    class LateModel(_Model):
        def _generate(self, *args: Any, **kwargs: Any) -> Any:
            clock.advance(5.0)  # the model step used the whole budget
            return super()._generate(*args, **kwargs)

    @tool
    def lookup(x: int) -> str:
        """Look something up."""
        ran.append(True)
        return "found"

    mw = TidalEpisodeMiddleware(deadline_s=5.0, clock=clock)
    agent = create_agent(model=LateModel(messages=iter([_call("lookup"), AIMessage("no")])),
                         tools=[lookup], middleware=[mw])
    out = agent.invoke({"messages": [("user", "go")]})
    assert not ran
    assert "not started" in _timed_out_reply(out).content
    assert mw.last_episode is not None
    (event,) = _events(mw.last_episode, "tool_timeout")
    assert event["started"] is False and event["timeout_s"] == 0.0


def test_tool_timeouts_can_be_turned_off() -> None:
    mw = TidalEpisodeMiddleware(deadline_s=0.3, tool_timeouts=False)
    model = _Model(messages=iter([_call("quick"), AIMessage("ok")]))
    out = create_agent(model=model, tools=[quick], middleware=[mw]).invoke(
        {"messages": [("user", "go")]})
    assert _timed_out_reply(out).content == "done"
    with pytest.raises(TidalConfigError, match="tool_timeouts"):
        TidalEpisodeMiddleware(deadline_s=1, tool_timeouts="yes")  # type: ignore[arg-type]


def test_announce_budget_is_checked_and_declared_by_config() -> None:
    with pytest.raises(TidalConfigError, match="announce_budget"):
        Episode(deadline_s=5, announce_budget="yes")  # type: ignore[arg-type]
    config = episode_config(10, "e1", announce_budget=True)
    assert config["configurable"]["tidal_announce_budget"] is True
    episode = Episode.from_config(config["configurable"])
    assert episode is not None and episode.announce_budget
    assert not Episode(deadline_s=5).announce_budget
