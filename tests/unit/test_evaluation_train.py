"""Predictor training on outcome rows: query-level split, Brier, reliability (no engine)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from synthetic_outcomes import synthetic_rows, write_synthetic_outcomes

from tidal_agents.errors import TidalConfigError
from tidal_agents.evaluation import train


def test_split_is_by_query_and_deterministic() -> None:
    rows = synthetic_rows(100)
    tr, te = train.split_rows(rows, 0.3, seed=1)
    assert {r["query_id"] for r in tr}.isdisjoint({r["query_id"] for r in te})
    assert 0.15 < len(te) / len(rows) < 0.45
    tr2, te2 = train.split_rows(rows, 0.3, seed=1)
    assert te == te2
    _, te3 = train.split_rows(rows, 0.3, seed=2)
    assert te3 != te
    with pytest.raises(TidalConfigError, match="test_fraction"):
        train.is_test_query("q", 1.0)


def test_train_beats_query_blind_baseline_and_saves(tmp_path: Path) -> None:
    predictor, report = train.train(synthetic_rows(150), seed=0)
    # digits drive accuracy: a query-aware predictor must beat the per-config mean clearly
    assert report["brier_trained"] < 0.6 * report["brier_per_config_mean"]
    assert report["brier_trained"] < report["brier_constant"]
    assert sum(b["count"] for b in report["reliability"]) == report["test_rows"]
    path = predictor.save(tmp_path / "p.joblib")
    assert path.exists()
    png = train.save_reliability_plot(report["reliability"], tmp_path / "r.png", "t")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_main_end_to_end(tmp_path: Path) -> None:
    f = write_synthetic_outcomes(tmp_path / "outcomes-x.jsonl.gz", 90)
    model = tmp_path / "m" / "pred.joblib"
    assert train.main(["--outcomes", str(f), "--model-out", str(model),
                       "--plot", str(tmp_path / "rel.png")]) == 0
    assert model.exists() and (tmp_path / "rel.png").exists()
    report = json.loads((model.parent / train.REPORT_FILE).read_text())
    assert report["test_queries"] + report["train_queries"] == 90


@pytest.mark.slow
def test_cross_validation_selects_on_the_training_split_only() -> None:
    rows = synthetic_rows(90)
    tr, te = train.split_rows(rows, 0.3, seed=0)
    cv = train.cross_validate(tr, "logistic", folds=3, repeats=2)
    assert cv["queries"] == len({r["query_id"] for r in tr})
    assert len(cv["gap_closed_expected_oracle_at_matched_tokens_each"]) == 2
    assert 0 <= cv["brier"] < 0.25
    folds = {train.cv_fold(r["query_id"], 3, 0) for r in tr}
    assert folds == {0, 1, 2}
    est, table = train.select_estimator(tr, ("logistic",), folds=3, repeats=1)
    assert est == "logistic" and table[0]["estimator"] == "logistic"
    # "select" records the CV table; held-out queries never enter it
    _, report = train.train(rows, seed=0, estimator="select")
    assert report["estimator"] in train.ESTIMATORS
    assert {r["queries"] for r in report["cv"]} == {report["train_queries"]}
    with pytest.raises(TidalConfigError, match="estimator='forest'"):
        train.train(rows, estimator="forest")
    with pytest.raises(TidalConfigError, match="folds=1"):
        train.cross_validate(tr, "logistic", folds=1)


def test_reliability_bins() -> None:
    table = train.reliability(np.array([0.05, 0.07, 0.95]), np.array([0.0, 1.0, 1.0]), bins=10)
    assert [t["count"] for t in table] == [2, 1]
    assert table[0]["observed"] == 0.5 and table[1]["predicted"] == 0.95


def test_missing_outcomes_error(tmp_path: Path) -> None:
    with pytest.raises(TidalConfigError, match="does not exist"):
        train.load_outcomes([tmp_path / "nope.jsonl"])


def test_split_and_folds_keep_an_agent_tasks_steps_together() -> None:
    from tidal_agents.evaluation.cross_validated import outer_folds

    def task_of(q: str) -> str:
        return q[: len("agent-s0-000")] if q.startswith("agent") else q

    qids = [f"agent-s0-{i:03d}-{step}" for i in range(30)
            for step in ("call", "call-required", "answer", "answer-none")]
    qids += [f"arith-s0-{i:03d}" for i in range(20)]
    for q in qids:
        group = [p for p in qids if task_of(p) == task_of(q)]
        assert {train.is_test_query(p, 0.3) for p in group} == {train.is_test_query(q, 0.3)}
        assert {train.cv_fold(p, 5, 1) for p in group} == {train.cv_fold(q, 5, 1)}
    fold = outer_folds(qids, 5, 0)
    for i in range(0, 120, 4):
        assert len(set(fold[i:i + 4])) == 1
    # balanced over the 50 groups: 10 per fold
    assert [len({task_of(qids[i]) for i in np.flatnonzero(fold == k)}) for k in range(5)] \
        == [10] * 5
