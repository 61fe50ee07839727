"""bench episodes: summary figures from episode outcomes (no engine)."""

from __future__ import annotations

import pytest

from tidal_agents.bench import episodes as bench


def _o(policy: str, d: float, ok: bool, hit: bool, tokens: int,
       lat: tuple[tuple[float, float], ...] = ()) -> bench.EpisodeOutcome:
    return bench.EpisodeOutcome("t", policy, d, ok, ok, hit, 1.0, tokens, 2, (), lat)


def test_summarise_rates_and_errors() -> None:
    outs = [
        _o("adaptive", 10, True, False, 100, ((1.0, 2.0),)),
        _o("adaptive", 10, False, True, 300, ((3.0, 2.0),)),
        _o("greedy", 10, True, False, 50, ((1.0, 1.0), (2.0, 1.0))),
        _o("greedy", 30, False, False, 70),
    ]
    s = bench.summarise(outs)
    assert s["success_rate"] == {"adaptive": {"10": 0.5}, "greedy": {"10": 1.0, "30": 0.0}}
    assert s["deadline_hit_rate_per_policy"]["adaptive"]["10"] == 0.5
    assert s["deadline_hit_rate"] == 0.5  # the adaptive policy overall
    assert s["mean_tokens"]["adaptive"]["10"] == 200
    # relative errors: 0.5, 0.5, 0, 1 -> median 0.5
    assert s["latency_pred_median_abs_rel_error"] == pytest.approx(0.5)
    assert s["per_policy"]["greedy"]["30"]["latency_pred_median_abs_rel_error"] is None


def test_step_latency_pairs_from_records() -> None:
    steps = [
        {"predicted_latency_s": 1.5, "spent": {"wall_s": 1.0}},
        {"predicted_latency_s": 2.0, "spent": {"wall_s": 4.0}},
        {"predicted_latency_s": None, "spent": {"wall_s": 1.0}},  # no prediction: skipped
        {"predicted_latency_s": 1.0, "spent": None},  # failed step: skipped
    ]
    assert bench.step_latency_pairs(steps) == [(1.5, 1.0), (2.0, 4.0)]
