"""Episodes: the allowance rule, shared episodes across tasks, step counters, config keys."""

from __future__ import annotations

import asyncio
import math
import threading

import pytest
from fakes import FakeClock
from hypothesis import given, settings
from hypothesis import strategies as st

from tidal_agents.allocation import CostModel, PriorAccuracyPredictor, StepFeatures
from tidal_agents.allocation.tool_time import TOOL_TIMES
from tidal_agents.episode import Episode, allowance_for, current_episode
from tidal_agents.errors import EpisodeDeadlineExceeded, TidalConfigError
from tidal_agents.trace.records import StepRecord


@given(
    deadline=st.floats(0.5, 600.0),
    expected=st.integers(1, 12),
    steps=st.integers(1, 40),
    margin_frac=st.floats(0.0, 0.5),
)
@settings(max_examples=300, deadline=None)
def test_allowances_consumed_in_full_never_sum_past_the_deadline(
    deadline: float, expected: int, steps: int, margin_frac: float
) -> None:
    """The worst case: every step spends its whole allowance."""
    clock = FakeClock()
    ep = Episode(deadline_s=deadline, expected_steps=expected,
                 safety_margin_s=deadline * margin_frac, clock=clock)
    total = 0.0
    for i in range(steps):
        allowance = ep.allowance_s(i)
        assert allowance >= 0
        total += allowance
        clock.advance(allowance)
    assert total <= deadline - ep.safety_margin_s + 1e-9
    assert ep.remaining_s() >= ep.safety_margin_s - 1e-9


@given(
    deadline=st.floats(1.0, 120.0),
    expected=st.integers(1, 8),
    gaps=st.lists(st.tuples(st.floats(0, 1), st.floats(0, 3)), min_size=1, max_size=25),
    tools=st.booleans(),
)
@settings(max_examples=300, deadline=None)
def test_no_step_may_end_past_the_deadline(
    deadline: float, expected: int, gaps: list[tuple[float, float]], tools: bool
) -> None:
    """Steps spend part of their allowance and tools take time between them: a step
    that starts in time, even if it spends its whole allowance, ends by the deadline.
    With tools, each step records a tool call whose measured time later allowances
    reserve."""
    TOOL_TIMES.clear()
    clock = FakeClock()
    ep = Episode(deadline_s=deadline, expected_steps=expected, clock=clock)
    for i, (fraction, tool_s) in enumerate(gaps):
        assert ep.next_step_index() == i
        allowance = ep.allowance_s(i, tools_bound=tools)
        if allowance > 0:  # with none left the step does not run (decide() raises)
            assert clock.t + allowance <= ep.deadline - ep.safety_margin_s + 1e-9
        clock.advance(allowance * fraction)
        if tools:
            ep.record(StepRecord(episode_id=ep.id, step_index=i, started_at=0, ended_at=0,
                                 decision={}, strategy="single", n=1, tool_calls=["tool"]))
        clock.advance(tool_s)
    TOOL_TIMES.clear()


def test_allowance_rule() -> None:
    assert allowance_for(10.0, 0, 4, 2.0) == 2.0
    assert allowance_for(10.0, 3, 4, 2.0) == 8.0
    assert allowance_for(10.0, 9, 4, 2.0) == 8.0  # beyond the expected steps: all that is left
    assert allowance_for(1.0, 0, 4, 2.0) == 0.0
    assert allowance_for(math.nan, 0, 4, 0.0) == 0.0
    clock = FakeClock()
    ep = Episode(deadline_s=12.0, expected_steps=3, safety_margin_s=0.0, clock=clock)
    assert ep.allowance_s() == ep.allowance_s(0) == 4.0 and ep.allowance_s(2) == 12.0
    with pytest.raises(TidalConfigError, match="step_index=-1"):
        ep.allowance_s(-1)


def test_decision_respects_the_allowance() -> None:
    clock = FakeClock()
    ep = Episode(deadline_s=6.0, expected_steps=2, clock=clock)
    f = StepFeatures.from_text("What is 2 + 3?", prompt_tokens=40, expected_output_tokens=64)
    d = ep.decide(f, CostModel.default(), PriorAccuracyPredictor())
    assert d.allowance_s == pytest.approx(ep.allowance_s())
    assert d.predicted_latency_s <= d.allowance_s
    # the same step with less time left picks something no slower
    clock.advance(3.5)
    later = ep.decide(f, CostModel.default(), PriorAccuracyPredictor())
    assert later.allowance_s < d.allowance_s
    assert later.predicted_latency_s <= d.predicted_latency_s


def test_an_expired_episode_raises_once_and_is_finished() -> None:
    clock = FakeClock()
    ep = Episode(deadline_s=3.0, clock=clock)
    f = StepFeatures(prompt_tokens=10, step_index=4)
    clock.advance(3.0)
    assert not ep.finished
    with pytest.raises(EpisodeDeadlineExceeded, match=r"3 s deadline leaves no time for step 4"):
        ep.decide(f, CostModel.default(), PriorAccuracyPredictor())
    assert ep.finished  # a caller keying episodes by thread starts a new one next time


def test_one_episode_shared_by_concurrent_tasks() -> None:
    """Tasks enter and leave the same episode in interleaved order without clobbering
    each other's context (a single shared token stack would raise here)."""
    ep = Episode(deadline_s=30)

    async def task(delay: float) -> bool:
        async with ep:
            await asyncio.sleep(delay)
            inside = current_episode() is ep
        return inside and current_episode() is None

    async def main() -> list[bool]:
        return await asyncio.gather(task(0.03), task(0.01), task(0.02))

    assert asyncio.run(main()) == [True, True, True]
    assert current_episode() is None


def test_nested_episodes_restore_the_outer_one() -> None:
    with Episode(deadline_s=30) as outer:
        with Episode(deadline_s=5) as inner:
            assert current_episode() is inner
        assert current_episode() is outer
        with outer.activate():
            assert current_episode() is outer
    assert current_episode() is None and outer.finished and inner.finished


def test_step_indices_are_unique_across_threads() -> None:
    ep = Episode(deadline_s=30)
    got: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        mine = [ep.next_step_index() for _ in range(250)]
        with lock:
            got.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(2000))


def test_config_keys() -> None:
    ep = Episode.from_config({"tidal_deadline_s": 9, "tidal_episode_id": "run-1",
                              "tidal_lambda_latency": 0.2, "thread_id": "t"})
    assert ep is not None and ep.deadline_s == 9 and ep.lambda_latency == 0.2
    with pytest.raises(TidalConfigError, match=r"'tidal_deadline_s', 'tidal_episode_id'"):
        Episode.from_config({"tidal_deadline_s": 9, "tidal_budget": 3})
    with pytest.raises(TidalConfigError, match="lambda_tokens=nan"):
        Episode.from_config({"tidal_deadline_s": 9, "tidal_lambda_tokens": math.nan})
    with pytest.raises(TidalConfigError, match="deadline_s=-3"):
        Episode.from_config({"tidal_deadline_s": -3})
    with pytest.raises(TidalConfigError, match="deadline_s='10'"):
        Episode.from_config({"tidal_deadline_s": "10"})
