"""Offline cascade evaluation (probe, then decide): confidence, outcomes, fit, bench keys."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import pytest
from synthetic_outcomes import synthetic_rows

from tidal_agents.bench import allocation as bench
from tidal_agents.evaluation.cascade import (
    CascadeTarget,
    cascade_outcomes,
    fit_cascade,
    side_file,
)
from tidal_agents.evaluation.collect import LatencyModel
from tidal_agents.selection.confidence import probe_confidence

LAT = LatencyModel(a=0.5, b=0.03, c=0.001)


def _sample(key: str | None, correct: bool, tokens: int, lp: float | None) -> dict:
    return {"answer_key": key, "correct": correct, "generated_tokens": tokens,
            "mean_logprob": lp, "finish_reason": "stop"}


def _records() -> dict[str, dict]:
    # q0: confident, right probe; q1: unsure, wrong probe, the other 15 samples right
    return {
        "q0": {"samples": [_sample("num:4", True, 10, -0.05)]
               + [_sample("num:5", False, 20, -1.0)] * 15},
        "q1": {"samples": [_sample("num:9", False, 30, -1.5)]
               + [_sample("num:7", True, 12 + i, -0.5) for i in range(15)]},
    }


def test_probe_confidence() -> None:
    assert probe_confidence(None, "num:1") == 0.0
    assert probe_confidence(-0.5, None) == 0.0
    assert probe_confidence(float("nan"), "num:1") == 0.0
    assert probe_confidence(0.0, "num:1") == 1.0
    assert probe_confidence(-0.5, "num:1") == pytest.approx(math.exp(-0.5))


def test_outcomes_sum_both_stages_exactly() -> None:
    targets = (CascadeTarget(15, "majority"), CascadeTarget(3, "confidence"))
    out = cascade_outcomes(_records(), ["q0", "q1"], LAT, {"q0": 40, "q1": 50}, targets)
    assert out.confidence[0] == pytest.approx(math.exp(-0.05))
    assert out.probe_tokens.tolist() == [50, 80]
    assert out.probe_latency[1] == pytest.approx(LAT.predict(1, 30))
    # n = 15: the one subset of every other sample; two requests, each with its prompt
    assert out.escalated_tokens[1, 0] == 80 + 50 + sum(12 + i for i in range(15))
    assert out.escalated_latency[1, 0] == pytest.approx(LAT.predict(1, 30) + LAT.predict(15, 26))
    # q0 escalated: 15 wrong votes outvote the right probe; q1: 15 right votes win
    assert out.escalated_label[:, 0].tolist() == [0.0, 1.0]
    assert out.escalated_label[1, 1] == 1.0  # 3 agreeing votes beat one less confident probe
    # stopping at the confident probe: right on q0, escalation on q1
    acc, tok, lat, stopped = out.evaluate(0.9, 0)
    assert (acc, stopped) == (1.0, 0.5)
    assert tok == pytest.approx((50 + out.escalated_tokens[1, 0]) / 2)
    assert out.evaluate(-1.0, 0)[:2] == (0.5, 65.0)  # probe only
    assert out.evaluate(1.01, 0)[0] == 0.5  # escalate always


def test_fit_chooses_within_budget_on_training() -> None:
    out = cascade_outcomes(_records(), ["q0", "q1"], LAT, {"q0": 40, "q1": 50},
                           (CascadeTarget(15, "majority"),))
    never_stop = out.evaluate(1.01, 0)
    generous = fit_cascade(out, {"latency": 1e9, "tokens": 1e9})
    assert generous["tokens"] is not None
    t, k = generous["tokens"]
    assert out.evaluate(t, k)[0] == 1.0 and out.evaluate(t, k)[1] < never_stop[1]
    assert fit_cascade(out, {"latency": 0.1, "tokens": 1.0}) == {"latency": None,
                                                                   "tokens": None}


def test_side_files() -> None:
    assert side_file(Path("/d/outcomes-arith.jsonl.gz"), "samples").name == \
        "samples-arith.jsonl.gz"


def test_bench_without_sample_files_says_why(tmp_path: Path) -> None:
    f = tmp_path / "outcomes-synth.jsonl.gz"
    with gzip.open(f, "wt") as fh:
        for r in synthetic_rows(60):
            fh.write(json.dumps(r) + "\n")

    class Args:
        outcomes = [f]
        plot_dir = tmp_path
        quick = True

    out = bench.run(None, Args())
    assert out["cascade_at_matched_tokens"] is None
    assert "samples-synth" in out["cascade"]["unavailable"]


def test_bench_cascade_on_committed_data(tmp_path: Path) -> None:
    class Args:
        outcomes = None
        plot_dir = tmp_path
        quick = True

    out = bench.run(None, Args())
    oracle, static = out["oracle"]["accuracy"], out["static_best"]["accuracy"]
    for key, cost in (("latency", "latency_s"), ("tokens", "tokens")):
        point = out[f"cascade_at_matched_{key}"]
        assert point["train"][cost] <= point["train"]["budget"] + 1e-9
        assert point["within_budget"] == (point[cost] <= out["static_best"][cost] + 1e-9)
        assert 0.0 <= point["stopped_fraction"] <= 1.0
        assert out[f"cascade_gap_closed_at_matched_{key}"] == pytest.approx(
            (point["accuracy"] - static) / (oracle - static))
        # the existing keys keep their meaning: the predictor policy
        assert "lambda_tokens" in out[f"adaptive_at_matched_{key}"]
    assert out["cascade"]["probe_only"]["tokens"] < out["static"]["single"]["tokens"] + 20
    json.dumps(out)


def _greedy(key: str | None, correct: bool, lps: list[float]) -> dict:
    return {"answer_key": key, "correct": correct, "generated_tokens": len(lps),
            "mean_logprob": sum(lps) / len(lps), "finish_reason": "stop",
            "token_logprobs": lps}


def test_greedy_probe_confidence_methods() -> None:
    from tidal_agents.errors import TidalConfigError
    from tidal_agents.selection.confidence import greedy_probe_confidence

    lps = [-0.1, -0.3, None, float("nan"), -2.0]
    assert greedy_probe_confidence(lps, "num:1", "mean") == pytest.approx(math.exp(-0.8))
    assert greedy_probe_confidence(lps, "num:1", "min") == pytest.approx(math.exp(-2.0))
    assert greedy_probe_confidence(lps, "num:1", "parses") == 1.0
    assert greedy_probe_confidence(lps, None, "mean") == 0.0
    assert greedy_probe_confidence([], "num:1", "mean") == 0.0
    with pytest.raises(TidalConfigError, match="method"):
        greedy_probe_confidence(lps, "num:1", "max")  # type: ignore[arg-type]


def test_greedy_cascade_outcomes_exact_costs_and_votes() -> None:
    from tidal_agents.evaluation.cascade import greedy_cascade_outcomes

    records = {"q": {"samples": [_sample("num:7", True, 10 + i, -0.5) for i in range(4)]}}
    greedy = {"q": _greedy("num:9", False, [-0.1, -0.2, -0.3])}
    targets = (CascadeTarget(4, "majority", True, "greedy"),
               CascadeTarget(4, "majority", False, "greedy"),
               CascadeTarget(1, "confidence", True, "greedy"))
    out = greedy_cascade_outcomes(records, greedy, ["q"], LAT, {"q": 40}, "min", targets)
    assert [t.name for t in targets] == ["greedy+bo4-majority", "greedy->bo4-majority",
                                         "greedy+bo1-confidence"]
    assert out.confidence[0] == pytest.approx(math.exp(-0.3))
    assert out.probe_label[0] == 0.0 and out.probe_tokens[0] == 43
    assert out.probe_latency[0] == pytest.approx(LAT.predict(1, 3))
    # n = pool: one subset, both requests' prompts and tokens, both latencies
    assert out.escalated_tokens[0, 0] == 43 + 40 + sum(10 + i for i in range(4))
    assert out.escalated_latency[0, 0] == pytest.approx(LAT.predict(1, 3) + LAT.predict(4, 13))
    assert out.escalated_label[0, :2].tolist() == [1.0, 1.0]  # 4 right votes beat greedy's one
    # one sample vs the more confident greedy: greedy's (wrong) answer wins the vote
    assert out.escalated_label[0, 2] == 0.0


def test_best_adaptive_policy() -> None:
    def pt(a: float) -> dict:
        return {"accuracy": a, "tokens": 1.0, "latency_s": 1.0}

    out = {"adaptive_at_matched_latency": pt(0.3), "adaptive_at_matched_tokens": pt(0.3),
           "gap_closed_at_matched_latency": -0.5, "gap_closed_at_matched_tokens": -0.5,
           "cascade_greedy_at_matched_latency": pt(0.4),
           "cascade_greedy_at_matched_tokens": pt(0.29),
           "cascade_greedy_gap_closed_at_matched_latency": 0.1,
           "cascade_greedy_gap_closed_at_matched_tokens": -0.6}
    assert bench.best_adaptive_policy(out) == {"adaptive_policy": "predictor"}
    out["cascade_greedy_at_matched_tokens"] = pt(0.35)
    out["cascade_greedy_gap_closed_at_matched_tokens"] = 0.05
    res = bench.best_adaptive_policy(out)
    assert res["adaptive_policy"] == "cascade_greedy"
    assert res["adaptive_at_matched_tokens"]["accuracy"] == 0.35
    assert res["gap_closed_at_matched_latency"] == 0.1
    assert res["predictor_at_matched_latency"]["accuracy"] == 0.3


def test_bench_greedy_cascade_on_committed_data(tmp_path: Path) -> None:
    class Args:
        outcomes = None
        plot_dir = tmp_path
        quick = True

    out = bench.run(None, Args())
    oracle, static = out["oracle"]["accuracy"], out["static_best"]["accuracy"]
    for key, cost in (("latency", "latency_s"), ("tokens", "tokens")):
        point = out[f"cascade_greedy_at_matched_{key}"]
        assert point["confidence"] in ("mean", "min", "parses")
        assert point["train"][cost] <= point["train"]["budget"] + 1e-9
        assert out[f"cascade_greedy_gap_closed_at_matched_{key}"] == pytest.approx(
            (point["accuracy"] - static) / (oracle - static))
        pp = out[f"cascade_predictor_probe_at_matched_{key}"]
        assert pp["train_cv"][cost] <= pp["train_cv"]["budget"] + 1e-9
        assert 0.0 <= pp["stopped_fraction"] <= 1.0
    # the greedy probe alone is the static greedy configuration's cost
    assert out["cascade_greedy"]["probe_only"]["tokens"] == pytest.approx(
        out["static"]["greedy"]["tokens"], rel=0.05)
    assert out["adaptive_policy"] in {"predictor", "cascade", "cascade_greedy",
                                      "cascade_predictor_probe"}
    json.dumps(out)
