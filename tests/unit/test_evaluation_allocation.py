"""bench allocation: oracle, lambda sweep, matched comparisons (offline, no engine)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from synthetic_outcomes import synthetic_rows, write_synthetic_outcomes

from tidal_agents.bench import allocation as bench
from tidal_agents.errors import TidalConfigError
from tidal_agents.evaluation import figures
from tidal_agents.evaluation.cross_validated import cross_validated_allocation


def test_oracle_prefers_right_then_cheap() -> None:
    labels = np.array([[1.0, 1.0, 0.0], [0.0, 0.5, 0.5], [0.0, 0.0, 0.0]])
    tokens = np.array([[50, 10, 5], [1, 30, 20], [9, 3, 7]], dtype=float)
    lat = np.ones_like(tokens)
    assert figures.oracle_choice(labels, tokens, lat).tolist() == [1, 2, 1]


def test_sweep_with_perfect_predictor_reaches_oracle_at_zero_cost() -> None:
    rng = np.random.default_rng(0)
    labels = rng.uniform(size=(40, 5))
    tokens = np.tile([10.0, 20, 40, 80, 160], (40, 1))
    lat = tokens / 100
    choices, lambdas = figures.sweep(labels, tokens.mean(0), lat.mean(0),
                                     np.array([0.0, 1.0]), np.array([0.0]))
    pts = figures.evaluate_choices(choices, labels, tokens, lat)
    assert lambdas.shape == (2, 2)
    assert pts[0, 0] == pytest.approx(labels.max(axis=1).mean())  # lambda 0: per-query best
    assert pts[1, 1] == 10.0  # a huge token price: always the cheapest config


def test_pareto_and_matched() -> None:
    pts = np.array([[0.5, 10, 1], [0.6, 20, 2], [0.55, 30, 3], [0.7, 40, 4]])
    assert figures.pareto_front(pts, 1).tolist() == [0, 1, 3]
    assert figures.matched(pts, 2, 3.0) == 1
    assert figures.matched(pts, 1, 5.0) is None


@pytest.mark.slow
def test_run_end_to_end_from_outcomes(tmp_path: Path) -> None:
    f = write_synthetic_outcomes(tmp_path / "outcomes-synth.jsonl.gz", 150)

    class Args:
        outcomes = [f]
        plot_dir = tmp_path / "plots"
        quick = True

    out = bench.run(None, Args())
    for key in ("static_best", "adaptive_at_matched_latency", "adaptive_at_matched_tokens",
                "oracle", "gap_closed_expected_oracle_at_matched_latency",
                "gap_closed_expected_oracle_at_matched_tokens"):
        assert key in out
    assert out["oracle"]["accuracy"] >= max(p["accuracy"] for p in out["static"].values())
    # accuracy here depends on the query (digits), but more samples are best on every query
    # (the oracle is only ~0.01 above bo16): allocation may save tokens and must not lose
    # more than a fraction of one query's worth of accuracy (1 / 45 held-out queries)
    matched, best = out["adaptive_at_matched_tokens"], out["static_best"]
    assert matched["accuracy"] >= best["accuracy"] - 0.01
    assert matched["tokens"] <= best["tokens"]
    assert out["adaptive_at_matched_tokens"]["tokens"] <= out["static_best"]["tokens"] + 1e-9
    assert len(out["plots"]) == 2 and all(Path(p).exists() for p in out["plots"])
    cv = out["cross_validated"]
    assert cv["queries"] == 150 and "_folds" not in cv
    assert cv["static"]["accuracy"] <= cv["oracle"]["accuracy"]
    json.dumps(out)  # the --json output must serialise


@pytest.mark.slow
def test_run_on_committed_outcomes(tmp_path: Path) -> None:
    """The shipped outcome set and predictor: all figures, consistent, well under 5 minutes."""
    import time

    class Args:
        outcomes = None
        plot_dir = tmp_path
        quick = False

    t0 = time.perf_counter()
    out = bench.run(None, Args())
    assert time.perf_counter() - t0 < 300
    assert out["predictor"].startswith("shipped")
    assert out["held_out_queries"] >= 40
    # beam runs on text steps only: its static point is over those, not a candidate
    static_acc = [p["accuracy"] for name, p in out["static"].items() if "beam" not in name]
    assert out["static_best"]["accuracy"] == max(static_acc)
    assert out["oracle"]["accuracy"] >= max(static_acc)
    assert out["oracle"]["tokens"] <= out["static_best"]["tokens"]
    for key in ("adaptive_at_matched_latency", "adaptive_at_matched_tokens"):
        point = out[key]
        assert point["latency_s" if "latency" in key else "tokens"] <= (
            out["static_best"]["latency_s" if "latency" in key else "tokens"] + 1e-9)
        gap = out[key.replace("adaptive_at", "gap_closed_expected_oracle_at")]
        oracle, static = out["oracle"]["accuracy"], out["static_best"]["accuracy"]
        assert gap == pytest.approx((point["accuracy"] - static) / (oracle - static))
    cv = out["cross_validated"]
    assert cv["queries"] == 312 and cv["folds"] == 5 and cv["repeats"] == 3
    assert len(cv["per_fold"]) == 15
    # the shipped recipe is what is cross-validated
    assert cv["estimator"] == json.loads((bench.data_dir() / "accuracy_predictor.json")
                                         .read_text())["estimator"]
    for key in ("tokens", "latency"):
        lo, hi = cv[f"gap_closed_expected_oracle_ci95_at_matched_{key}"]
        assert lo <= cv[f"gap_closed_expected_oracle_at_matched_{key}"] <= hi
    # the headline: adaptive at matched accuracy against the static best, with intervals
    static, adaptive = cv["static_best"], cv["adaptive"]
    lo, hi = adaptive["accuracy_ci95"]
    assert lo <= adaptive["accuracy"] <= hi
    saved = 1 - adaptive["tokens"] / static["tokens"]
    assert cv["tokens_saved"] == pytest.approx(saved)
    lo, hi = cv["tokens_saved_ci95"]
    assert lo <= saved <= hi
    matched = adaptive["accuracy"] >= static["accuracy"] - 0.01 - 1e-12
    assert (cv["tokens_saved_at_matched_accuracy"] is not None) == matched
    diff = cv["adaptive_minus_static_best"]
    assert diff["difference"] == pytest.approx(adaptive["accuracy"] - static["accuracy"])
    assert diff["ci95"][0] <= diff["difference"] <= diff["ci95"][1] and diff["pairs"] == 312
    # the chat model's default lambdas, scored on the same out-of-fold predictions
    from tidal_agents.step.decide import AllocationSettings

    shipped = cv["adaptive_at_shipped_defaults"]
    assert shipped["lambdas"] == [AllocationSettings.lambda_tokens,
                                  AllocationSettings.lambda_latency]
    assert shipped["tokens_saved"] == pytest.approx(1 - shipped["tokens"] / static["tokens"])
    assert sum(shipped["configs_used"].values()) == 312 * 3
    picked = cv["lambdas_selected_on_all_queries"]["matched_accuracy_tokens"]
    assert picked is not None and len(picked["lambdas"]) == 2
    gap = cv["gap_closed_expected_oracle"]
    assert gap == pytest.approx((adaptive["accuracy"] - static["accuracy"])
                                / (cv["oracle"]["accuracy"] - static["accuracy"]))
    # a static policy serves every step: never beam, which tool steps cannot run
    assert not any(name.startswith("beam")
                   for name in cv["static"]["configs_chosen_per_fold"])


def test_cross_validated_figure_is_out_of_fold(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every query decided once per repeat, by a fit that never saw it; intervals bracket."""
    from tidal_agents.evaluation import train

    rows = synthetic_rows(100)
    fitted: dict[int, set[str]] = {}  # id(predictor) -> query ids it was fitted on
    predicted: list[tuple[object, set[str]]] = []  # (predictor, query ids), kept alive
    keep: list[object] = []  # outer predictors stay alive: their ids stay unique
    real_fit, real_predict = train.fit_recipe, train.predict_rows

    def fit_recipe(fit_rows, *a, **kw):  # type: ignore[no-untyped-def]
        pred, est, cv = real_fit(fit_rows, *a, **kw)
        fitted[id(pred)] = {r["query_id"] for r in fit_rows}
        keep.append(pred)
        for c in cv or []:  # the inner CV (lambda choice) saw the training folds only
            assert set(c["_oof"]["qids"]) == fitted[id(pred)]
        return pred, est, cv

    def predict_rows(pred, pred_rows):  # type: ignore[no-untyped-def]
        predicted.append((pred, {r["query_id"] for r in pred_rows}))
        return real_predict(pred, pred_rows)

    monkeypatch.setattr(train, "fit_recipe", fit_recipe)
    monkeypatch.setattr(train, "predict_rows", predict_rows)
    cv = cross_validated_allocation(rows, folds=5, repeats=2, inner_folds=3,
                                    inner_repeats=1, points=8, resamples=200)
    outer = [(id(p), q) for p, q in predicted if any(p is k for k in keep)]
    # 5 x 2 outer fits, and one on every query for the default lambdas' selection,
    # whose predictor decides nothing
    assert len(outer) == 5 * 2 and len(fitted) == 5 * 2 + 1
    on_all = [p for p, q in fitted.items() if q == {r["query_id"] for r in rows}]
    assert len(on_all) == 1 and on_all[0] not in {p for p, _ in outer}
    for p, q in outer:
        assert q and q.isdisjoint(fitted[p])  # no query decided by a model trained on it
    # bookkeeping: per repeat, the folds partition the queries; fit and decided disjoint
    all_q = {r["query_id"] for r in rows}
    for rep in range(2):
        folds = [f for f in cv["_folds"] if f["repeat"] == rep]
        decided = [q for f in folds for q in f["decided"]]
        assert sorted(decided) == sorted(all_q)
        for f in folds:
            assert set(f["trained_on"]) == all_q - set(f["decided"])
            assert 18 <= len(f["decided"]) <= 22  # balanced folds
    assert cv["queries"] == 100 and len(cv["per_repeat"]) == 2
    for key in ("tokens", "latency"):
        point = cv[f"adaptive_at_matched_{key}"]
        assert 0 <= point["accuracy"] <= cv["oracle"]["accuracy"]
        assert sum(point["configs_used"].values()) == 100 * 2
        d, (lo, hi) = (cv[f"adaptive_minus_static_at_matched_{key}"],
                       cv[f"adaptive_minus_static_ci95_at_matched_{key}"])
        assert lo <= d <= hi
        gap, (glo, ghi) = (cv[f"gap_closed_expected_oracle_at_matched_{key}"],
                           cv[f"gap_closed_expected_oracle_ci95_at_matched_{key}"])
        assert glo <= gap <= ghi
        assert gap == pytest.approx((point["accuracy"] - cv["static"]["accuracy"])
                                    / (cv["oracle"]["accuracy"] - cv["static"]["accuracy"]))
        each = [r[f"adaptive_at_matched_{key}"]["accuracy"] for r in cv["per_repeat"]]
        assert point["accuracy"] == pytest.approx(float(np.mean(each)))
    assert isinstance(cv["goal_met"], bool)
    cv.pop("_folds")
    json.dumps(cv)
    with pytest.raises(TidalConfigError, match="complete queries"):
        cross_validated_allocation(synthetic_rows(20))
