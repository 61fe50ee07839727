"""The probe predictor (offline comparison) and the cross-validation's predictor hook."""

from __future__ import annotations

import numpy as np
import pytest
from synthetic_outcomes import synthetic_rows

from tidal_agents.errors import TidalConfigError
from tidal_agents.evaluation import train
from tidal_agents.evaluation.cross_validated import cross_validated_allocation
from tidal_agents.evaluation.probe import C_GRID, ProbePredictor


def _hidden(rows: list[dict], informative: bool, dims: int = 48) -> dict[str, np.ndarray]:
    """Per query a vector that encodes its digit count (informative) or noise only."""
    rng = np.random.default_rng(0)
    out = {}
    for r in rows:
        if r["query_id"] in out:
            continue
        v = rng.normal(0, 1, dims)
        if informative:
            digits = len(r["question"].split()[2])
            v[:3] += 4.0 * (np.arange(3) == digits - 1)
        out[r["query_id"]] = v
    return out


def test_probe_predictor_learns_from_an_informative_hidden_state() -> None:
    rows = synthetic_rows(90)
    fit, held = rows[: 60 * 3], rows[60 * 3:]
    labels = np.array([r["soft_label"] for r in held])
    briers = {}
    for informative in (True, False):
        pred = ProbePredictor("probe", _hidden(rows, informative)).fit_outcome_rows(fit)
        p = train.predict_rows(pred, held)  # the hook: rows go to the predictor as they are
        assert p.shape == (len(held),) and ((p >= 0) & (p <= 1)).all()
        briers[informative] = train.brier(p, labels)
        assert {c["C"] for c in pred.chosen().values()} <= set(C_GRID)
    assert briers[True] < briers[False] - 0.02
    fixed = ProbePredictor("probe", _hidden(rows, True), c_grid=(1.0,), pca_dims=(4,))
    chosen = fixed.fit_outcome_rows(fit).chosen()
    assert chosen and all(c == {"C": 1.0, "pca_dims": 4} for c in chosen.values())


def test_probe_predictor_checks_its_inputs() -> None:
    rows = synthetic_rows(30)
    with pytest.raises(TidalConfigError, match="feature_set"):
        ProbePredictor("hidden")
    with pytest.raises(TidalConfigError, match="c_grid"):
        ProbePredictor("surface", c_grid=())
    with pytest.raises(TidalConfigError, match="needs hidden states"):
        ProbePredictor("probe")
    partial = _hidden(rows[:30], True)
    with pytest.raises(TidalConfigError, match="no hidden state"):
        ProbePredictor("surface+probe", partial).fit_outcome_rows(rows)


def test_cross_validation_with_a_predictor_factory_and_an_adaptive_overhead() -> None:
    rows = synthetic_rows(40)
    hidden = _hidden(rows, True)

    def factory(seed: int) -> ProbePredictor:
        return ProbePredictor("surface+probe", hidden, random_state=seed)

    common = dict(folds=3, repeats=1, inner_folds=3, inner_repeats=1, points=6, resamples=100,
                  estimator="probe", predictor_factory=factory)
    free = cross_validated_allocation(rows, **common)
    charged = cross_validated_allocation(rows, **common, adaptive_overhead_s=0.25)
    assert free["estimator"] == "probe" and "predictor_factory" in free["estimator_note"]
    assert "adaptive_overhead_s" not in free and charged["adaptive_overhead_s"] == 0.25
    # the headline's lambda is chosen on tokens: same decisions, latency charged per step
    assert charged["adaptive"]["accuracy"] == free["adaptive"]["accuracy"]
    assert charged["adaptive"]["latency_s"] == pytest.approx(free["adaptive"]["latency_s"] + 0.25)
    assert charged["static_best"] == free["static_best"]
    assert charged["oracle"] == free["oracle"]
