"""Episodes: deadlines, allowances, context isolation, config keys, trace exporters."""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from pathlib import Path

import matplotlib.image
import pytest
from fakes import FakeClock
from hypothesis import given, settings
from hypothesis import strategies as st

from tidal_agents.allocation import CostModel, PriorAccuracyPredictor, StepFeatures
from tidal_agents.episode import Episode, current_episode
from tidal_agents.errors import EpisodeDeadlineExceeded, TidalConfigError
from tidal_agents.trace import Trace
from tidal_agents.trace.records import StepRecord
from tidal_agents.types import Candidate, CostRecord, StrategyResult


def _features(step: int = 0) -> StepFeatures:
    return StepFeatures.from_text("What is 2 + 3?", prompt_tokens=40, step_index=step)


@given(
    deadline=st.floats(1.0, 120.0),
    expected=st.integers(1, 8),
    use=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=30),
)
@settings(max_examples=200, deadline=None)
def test_allowances_never_sum_past_the_deadline(
    deadline: float, expected: int, use: list[float]
) -> None:
    clock = FakeClock()
    ep = Episode(deadline_s=deadline, expected_steps=expected, clock=clock)
    total = 0.0
    for fraction in use:
        allowance = ep.allowance_s()
        if allowance <= 0:
            break
        spent = allowance * fraction  # a step never outlives its allowance (hard limit)
        total += spent
        clock.advance(spent)
        ep._steps_done += 1
    assert total <= deadline - ep.safety_margin_s + 1e-9


def test_deadline_exceeded_and_fallback() -> None:
    clock = FakeClock()
    cm, pred = CostModel.default(), PriorAccuracyPredictor()
    ep = Episode(deadline_s=2.0, clock=clock)
    clock.advance(5)
    with pytest.raises(EpisodeDeadlineExceeded, match="deadline"):
        ep.decide(_features(), cm, pred)
    fb = Episode(deadline_s=2.0, clock=clock, on_deadline="fallback", fallback_allowance_s=0.5)
    clock.advance(5)
    decision = fb.decide(_features(), cm, pred)
    fastest = min(decision.candidates, key=lambda c: c.latency_s)
    assert decision.config.name == fastest.name
    assert decision.allowance_s == 0.5 and "fallback" in decision.reason


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"deadline_s": -1}, "deadline_s=-1"),
        ({"deadline_s": math.nan}, "deadline_s=nan"),
        ({"deadline_s": 10, "lambda_tokens": math.nan}, "lambda_tokens=nan"),
        ({"deadline_s": 10, "lambda_latency": -0.1}, "lambda_latency=-0.1"),
        ({"deadline_s": 10, "expected_steps": 0}, "expected_steps=0"),
        ({"deadline_s": 10, "on_deadline": "ignore"}, "on_deadline='ignore'"),
        ({"deadline_s": 1, "safety_margin_s": 2}, "safety_margin_s=2"),
    ],
)
def test_bad_episode_arguments(kwargs: dict, fragment: str) -> None:
    with pytest.raises(TidalConfigError, match=fragment):
        Episode(**kwargs)


def test_from_config() -> None:
    assert Episode.from_config({"thread_id": "x"}) is None
    ep = Episode.from_config({"tidal_deadline_s": 12, "tidal_lambda_tokens": 0.0})
    assert ep is not None and ep.deadline_s == 12 and ep.lambda_tokens == 0.0
    with pytest.raises(TidalConfigError, match="tidal_deadline"):
        Episode.from_config({"tidal_deadlin_s": 12})
    with pytest.raises(TidalConfigError, match="no 'tidal_deadline_s'"):
        Episode.from_config({"tidal_lambda_tokens": 0.1})


def test_context_isolation_threads_and_tasks() -> None:
    seen: dict[str, str | None] = {}

    def worker(name: str) -> None:
        with Episode(deadline_s=5) as ep:
            time.sleep(0.05)
            current = current_episode()
            seen[name] = current.id if current is ep else "wrong"

    threads = [threading.Thread(target=worker, args=(f"t{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert "wrong" not in seen.values() and len(set(seen.values())) == 4
    assert current_episode() is None

    async def task(i: int) -> str:
        async with Episode(deadline_s=5) as ep:
            await asyncio.sleep(0.01)
            return "ok" if current_episode() is ep else "wrong"

    async def main() -> list[str]:
        return await asyncio.gather(*(task(i) for i in range(5)))

    assert asyncio.run(main()) == ["ok"] * 5


def _record(ep: Episode, step: int, clock: FakeClock) -> StepRecord:
    decision = ep.decide(_features(step), CostModel.default(), PriorAccuracyPredictor())
    cfg = decision.config
    result = StrategyResult(
        selected=Candidate(text="5", token_ids=(1,), finish_reason="stop"),
        candidates=(), cost=CostRecord(prompt_tokens=40, generated_tokens=3, engine_calls=1,
                                       wall_s=0.5), config=cfg, details={"votes": {"5": 3}},
    )
    t0 = time.time()
    return StepRecord.from_step(
        episode_id=ep.id, step_index=step, node="model", langgraph_step=step + 1,
        started_at=t0, ended_at=t0 + 0.5, time_left_before_s=ep.remaining_s(),
        time_left_after_s=ep.remaining_s() - 0.5, decision=decision, result=result, error=None,
        features=_features(step), finish="answer",
    )


def test_trace_exporters(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "t.jsonl"
    ep = Episode(deadline_s=30, trace_path=path, clock=clock)
    with ep:
        for i in range(3):
            ep.record(_record(ep, i, clock))
            # flushed per step: readable while the episode is still open
            assert len(path.read_text().splitlines()) == i + 1
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x["step_index"] for x in lines] == [0, 1, 2]
    assert lines[0]["decision"]["candidates"] and lines[0]["spent"]["generated_tokens"] == 3
    back = Trace.from_jsonl(path)
    assert [r.step_index for r in back] == [0, 1, 2]
    df = ep.trace.to_dataframe()
    assert {"strategy", "spent_wall_s", "predicted_latency_s", "cut_short"} <= set(df.columns)
    png = ep.trace.plot(tmp_path / "t.png")
    assert matplotlib.image.imread(str(png)).ndim == 3
    assert ep.trace.table().row_count == 3


def test_episode_config_builds_checked_configurable_keys() -> None:
    from tidal_agents import episode_config
    from tidal_agents.episode import Episode

    config = episode_config(30, "user-42", lambda_latency=0.1, on_deadline="fallback")
    assert config == {"configurable": {
        "tidal_deadline_s": 30, "tidal_episode_id": "user-42",
        "tidal_lambda_latency": 0.1, "tidal_on_deadline": "fallback",
    }}
    episode = Episode.from_config(config["configurable"])
    assert episode is not None and episode.id == "user-42" and episode.deadline_s == 30
    with pytest.raises(TidalConfigError, match="deadline_s"):
        episode_config(-1)
    with pytest.raises(TidalConfigError, match="on_deadline"):
        episode_config(5, on_deadline="panic")  # type: ignore[arg-type]
