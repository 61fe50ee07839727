"""bench episodes: summary figures from episode outcomes (no engine)."""

from __future__ import annotations

import dataclasses

import pytest

from tidal_agents.bench import episodes as bench
from tidal_agents.evaluation.agent_tasks import agent_tasks


def _o(policy: str, d: float, ok: bool, outcome: str, tokens: int,
       lat: tuple[tuple[float, float], ...] = (), task: str = "t",
       cut: int = 0) -> bench.EpisodeOutcome:
    return bench.EpisodeOutcome(
        task, policy, d, ok, ok, outcome, 1.0, tokens, 2, (), output_tokens=tokens // 2,
        cut_short_steps=cut, step_latency=lat,
    )


def test_summarise_rates_and_errors() -> None:
    outs = [
        _o("adaptive", 10, True, "usable", 100, ((1.0, 2.0),), task="a"),
        _o("adaptive", 10, False, "over_deadline", 300, ((3.0, 2.0),), task="b", cut=1),
        _o("greedy", 10, True, "usable", 50, ((1.0, 1.0), (2.0, 1.0)), task="a"),
        _o("greedy", 30, False, "no_usable_reply", 70, task="b"),
    ]
    s = bench.summarise(outs)
    assert s["success_rate"] == {"adaptive": {"10": 0.5}, "greedy": {"10": 1.0, "30": 0.0}}
    assert s["deadline_hit_rate_per_policy"]["adaptive"]["10"] == 0.5
    assert s["deadline_hit_rate"] == 0.5  # the adaptive policy overall: usable by the deadline
    assert s["over_deadline_rate"] == {"adaptive": 0.5, "greedy": 0.0}
    assert s["no_usable_reply_rate"] == {"adaptive": 0.0, "greedy": 0.5}
    assert s["cut_short_step_rate"] == {"adaptive": 0.25, "greedy": 0.0}
    assert s["over_deadline_rate_all"] == 0.25
    assert s["mean_tokens"]["adaptive"]["10"] == 200
    assert s["pooled"]["greedy"] == {"success": 0.5, "tokens": 30.0, "episodes": 2}
    # relative errors: 0.5, 0.5, 0, 1 -> median 0.5; first steps: 0.5, 0.5, 0 -> 0.5
    assert s["latency_pred_median_abs_rel_error"] == pytest.approx(0.5)
    assert s["latency_pred_first_step"]["median_abs_rel_error"] == pytest.approx(0.5)
    assert s["latency_pred_first_step"]["steps"] == 3
    assert s["per_policy"]["greedy"]["30"]["latency_pred_median_abs_rel_error"] is None
    assert "deadline_hit_rate" in s["definitions"]


def test_step_latency_pairs_from_records() -> None:
    steps = [
        {"predicted_latency_s": 1.5, "spent": {"wall_s": 1.0}},
        {"predicted_latency_s": 2.0, "spent": {"wall_s": 4.0}},
        {"predicted_latency_s": None, "spent": {"wall_s": 1.0}},  # no prediction: skipped
        {"predicted_latency_s": 1.0, "spent": None},  # failed step: skipped
    ]
    assert bench.step_latency_pairs(steps) == [(1.5, 1.0), (2.0, 4.0)]


def test_cut_short_steps_are_scored_with_their_allowance_as_the_actual() -> None:
    steps = [
        {"predicted_latency_s": 3.0, "spent": {"wall_s": 1.9}, "cut_short": True,
         "allowance_s": 2.0},
        {"predicted_latency_s": 1.0, "spent": {"wall_s": 1.2}, "cut_short": False},
    ]
    assert bench.step_latency_pairs(steps) == [(3.0, 2.0), (1.0, 1.2)]


def test_best_static_is_the_most_successful_policy_that_meets_the_deadline() -> None:
    outs = [
        # 4 s: bo16 succeeds more but ends one episode of two after the deadline
        _o("bo16-majority", 4, True, "usable", 900, task="a"),
        _o("bo16-majority", 4, True, "over_deadline", 900, task="b"),
        _o("greedy", 4, True, "usable", 100, task="a"),
        _o("greedy", 4, False, "usable", 100, task="b"),
        _o("adaptive", 4, True, "usable", 300, task="a"),
        _o("adaptive", 4, False, "usable", 300, task="b"),
        # 8 s: the only static ends after the deadline
        _o("greedy", 8, True, "over_deadline", 100, task="c"),
        _o("adaptive", 8, False, "usable", 100, task="c"),
    ]
    s = bench.summarise(outs)
    assert s["best_static_meeting_deadline"]["4"] == "greedy"
    versus = s["adaptive_vs_best_static"]["4"]
    assert versus["best_static_success_rate"] == 0.5
    assert versus["success_difference"] == {"difference": 0.0, "ci95": [0.0, 0.0], "pairs": 2}
    assert versus["adaptive_success_at_least_best_static_minus_0.02"] is True
    assert s["best_static_meeting_deadline"]["8"] is None
    assert s["adaptive_vs_best_static"]["8"]["best_static_success_rate"] is None
    worse = bench.summarise([*outs[:4], _o("adaptive", 4, False, "usable", 300, task="a"),
                             _o("adaptive", 4, False, "usable", 300, task="b")])
    assert worse["adaptive_vs_best_static"]["4"][
        "adaptive_success_at_least_best_static_minus_0.02"] is False
    assert worse["adaptive_vs_best_static"]["4"]["success_difference"]["difference"] == -0.5


def test_best_static_ties_go_to_the_cheaper_policy() -> None:
    outs = [_o("greedy", 4, True, "usable", 100), _o("bo4-majority", 4, True, "usable", 400),
            _o("adaptive", 4, True, "usable", 200)]
    assert bench.summarise(outs)["best_static_meeting_deadline"]["4"] == "greedy"
    outs[0] = _o("zz-cheap", 4, True, "usable", 50)
    assert bench.summarise(outs)["best_static_meeting_deadline"]["4"] == "zz-cheap"


def test_empty_endings_with_budget_left_are_counted_for_the_adaptive_policy() -> None:
    outs = [_o("adaptive", 4, False, "no_usable_reply", 10), _o("greedy", 4, False,
                                                                "no_usable_reply", 10)]
    assert bench.summarise(outs)["adaptive_empty_endings_with_budget_left"] == 1
    # one that ran up to its safety margin (0.2 s at 4 s) had no budget left
    used_up = dataclasses.replace(outs[0], wall_s=3.85)
    summary = bench.summarise([used_up, outs[1]])
    assert summary["adaptive_empty_endings_with_budget_left"] == 0
    assert summary["adaptive_no_usable_reply_before_deadline"] == 1


def test_episode_plan_is_seeded_per_task_and_the_same_for_every_policy() -> None:
    tasks = agent_tasks(12, seed=3)
    plan = bench.episode_plan(tasks, (2.5, 4.0, 8.0, 12.0), (0.1, 1.5), seed=3)
    assert plan == bench.episode_plan(tasks, (2.5, 4.0, 8.0, 12.0), (0.1, 1.5), seed=3)
    assert {d for _, d, _ in plan} <= {2.5, 4.0, 8.0, 12.0} and len({d for _, d, _ in plan}) > 1
    assert all(0.1 <= delay <= 1.5 for _, _, delay in plan)
    with pytest.raises(Exception, match="tool_delay"):
        bench.episode_plan(tasks, (4.0,), (2.0, 1.0), seed=3)
