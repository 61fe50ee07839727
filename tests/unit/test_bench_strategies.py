"""The pure pieces of the strategies and engine benches: interleaving, spreads, the
bootstrap interval of the wrapper overhead, the beam comparison and the run sizes."""

from __future__ import annotations

import argparse
import statistics

import pytest

from tidal_agents.bench.stats import bootstrap_median_interval, paired_overhead, rotated, spread
from tidal_agents.bench.strategies import (
    DEFAULT_PAIRS,
    QUICK_PAIRS,
    add_arguments,
    beam_comparison,
    settings_from,
)


def test_rotated_starts_each_repeat_with_the_next_side() -> None:
    sides = ("a", "b", "c")
    assert [rotated(sides, i) for i in range(4)] == [
        ["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"],
    ]
    assert rotated((), 3) == []


def test_spread_reports_median_quartiles_and_extremes() -> None:
    s = spread([4.0, 1.0, 3.0, 2.0, 5.0])
    assert s == {"median": 3.0, "p25": 2.0, "p75": 4.0, "min": 1.0, "max": 5.0, "n": 5}
    with pytest.raises(ValueError):
        spread([])


def test_bootstrap_interval_is_seeded_and_holds_the_median() -> None:
    values = [float(v) for v in (3, 9, 4, 7, 5, 12, 6, 2, 8, 5, 4, 6)]
    lo, hi = bootstrap_median_interval(values, seed=1)
    assert (lo, hi) == bootstrap_median_interval(values, seed=1)
    assert lo <= statistics.median(values) <= hi
    assert min(values) <= lo < hi <= max(values)
    assert bootstrap_median_interval([2.5] * 10) == (2.5, 2.5)


def test_paired_overhead_is_the_median_paired_difference_in_ms() -> None:
    bare = [1.0, 2.0, 1.5, 1.2, 1.1]
    extra_ms = [5.0, 7.0, 6.0, 100.0, 4.0]  # one outlier pair
    wrapped = [b + e / 1000 for b, e in zip(bare, extra_ms, strict=True)]
    out = paired_overhead(wrapped, bare)
    assert out["overhead_ms"] == pytest.approx(6.0)
    lo, hi = out["overhead_ms_ci95"]
    assert 4.0 - 1e-9 <= lo <= 6.0 <= hi <= 100.0 + 1e-9
    assert out["pairs"] == 5
    assert out["bare_wall_s"] == pytest.approx(1.2)
    assert out["overhead_ratio"] == pytest.approx(
        statistics.median(w / b for w, b in zip(wrapped, bare, strict=True))
    )
    assert out["ratio_of_minima"] == pytest.approx(min(wrapped) / min(bare))
    with pytest.raises(ValueError):
        paired_overhead([1.0], [1.0, 2.0])


def _side(correct: bool, tokens: int, wall: float) -> dict[str, object]:
    return {"correct": correct, "generated_tokens": tokens, "wall_s": wall, "engine_calls": 2}


def test_beam_comparison_summarises_both_sides_per_question() -> None:
    rows = [
        {"id": "q0", "kind": "add-1d", "beam": _side(True, 40, 1.0),
         "vllm_beam": _side(True, 256, 4.0)},
        {"id": "q1", "kind": "mul-1d", "beam": _side(False, 60, 2.0),
         "vllm_beam": _side(True, 256, 3.0)},
    ]
    out = beam_comparison(rows)
    assert out["questions"] == 2
    assert out["beam"]["accuracy"] == 0.5 and out["vllm_beam"]["accuracy"] == 1.0
    assert out["beam"]["mean_generated_tokens"] == 50
    assert out["vllm_beam"]["mean_wall_s"] == 3.5
    assert out["beam"]["s_per_token"] == pytest.approx(3.0 / 100)
    # per-question ratios 4.0 and 1.5: the median of two is their mean
    assert out["wall_ratio_vllm_beam_over_beam"]["median"] == pytest.approx(2.75)
    assert [r["id"] for r in out["per_question"]] == ["q0", "q1"]
    with pytest.raises(ValueError):
        beam_comparison([])


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_run_sizes_meet_the_issue_by_default_and_follow_the_options() -> None:
    default = settings_from(_parse())
    assert default["pairs"] == DEFAULT_PAIRS >= 30
    assert settings_from(_parse("--quick"))["pairs"] == QUICK_PAIRS
    chosen = settings_from(_parse("--quick", "--pairs", "40", "--questions", "20"))
    assert chosen["pairs"] == 40 and chosen["questions"] == 20
    # the beam questions are drawn from the accuracy items, so there are enough of them
    assert chosen["accuracy_questions"] >= 20
    assert settings_from(None)["pairs"] == DEFAULT_PAIRS


@pytest.mark.parametrize("bad", ["0", "-3"])
def test_sizes_below_one_are_refused(bad: str) -> None:
    with pytest.raises(SystemExit):
        _parse("--pairs", bad)
