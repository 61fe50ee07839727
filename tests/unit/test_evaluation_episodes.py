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


def test_best_static_is_the_most_successful_policy_that_meets_the_deadline() -> None:
    outs = [
        # 4 s: bo16 succeeds more but misses one deadline of two: not eligible
        _o("bo16-majority", 4, True, True, 900), _o("bo16-majority", 4, True, False, 900),
        _o("greedy", 4, True, True, 100), _o("greedy", 4, False, True, 100),
        _o("adaptive", 4, True, True, 300), _o("adaptive", 4, False, True, 300),
        # 8 s: every static misses a deadline
        _o("greedy", 8, True, False, 100), _o("adaptive", 8, False, True, 100),
    ]
    s = bench.summarise(outs)
    assert s["best_static_meeting_deadline"]["4"] == {
        "policy": "greedy", "success_rate": 0.5, "deadline_hit_rate": 1.0}
    assert s["adaptive_vs_best_static"]["4"]["adaptive_success_at_least_best_static"] is True
    assert s["best_static_meeting_deadline"]["8"] is None
    assert s["adaptive_vs_best_static"]["8"]["best_static_success_rate"] is None
    worse = bench.summarise([*outs[:4], _o("adaptive", 4, False, True, 300)])
    assert worse["adaptive_vs_best_static"]["4"]["adaptive_success_at_least_best_static"] is False


def test_cut_short_steps_are_not_latency_prediction_errors() -> None:
    steps = [{"predicted_latency_s": 3.0, "spent": {"wall_s": 1.0}, "cut_short": True},
             {"predicted_latency_s": 1.0, "spent": {"wall_s": 1.2}, "cut_short": False}]
    assert bench.step_latency_pairs(steps) == [(1.0, 1.2)]


def test_best_static_ties_go_to_the_cheaper_policy() -> None:
    outs = [_o("greedy", 4, True, True, 100), _o("bo4-majority", 4, True, True, 400),
            _o("adaptive", 4, True, True, 200)]
    assert bench.summarise(outs)["best_static_meeting_deadline"]["4"]["policy"] == "greedy"
    outs[0] = _o("zz-cheap", 4, True, True, 50)
    assert bench.summarise(outs)["best_static_meeting_deadline"]["4"]["policy"] == "zz-cheap"
