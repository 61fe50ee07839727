"""Accuracy predictors: the documented prior, the calibrated sklearn model, soft labels."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from tidal_agents.allocation import (
    PriorAccuracyPredictor,
    SklearnAccuracyPredictor,
    StepFeatures,
    TrainingRow,
    bootstrap_soft_label,
    default_grid,
)
from tidal_agents.allocation.features import FEATURE_NAMES
from tidal_agents.allocation.predictor import (
    CONFIG_FEATURE_NAMES,
    AccuracyPredictor,
    design_matrix,
)
from tidal_agents.errors import TidalConfigError
from tidal_agents.types import StrategyConfig

GRID = default_grid(64)


def q(text: str, kind: str = "math") -> StepFeatures:
    return StepFeatures.from_text(text, prompt_tokens=50, answer_kind=kind)  # type: ignore[arg-type]


def bo(n: int, selector: str = "majority") -> StrategyConfig:
    return StrategyConfig(strategy="best_of_n", n=n, selector=selector)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- prior
def test_prior_has_diminishing_returns_in_n() -> None:
    p = PriorAccuracyPredictor()
    ns = np.array([1, 2, 4, 8, 16, 32])
    for text in ("What is 3 + 4?", "What is 37 + 48?", "What is 372 + 948?"):
        accs = np.array(p.predict(q(text), [bo(int(n)) for n in ns]))
        per_sample_gain = np.diff(accs) / np.diff(ns)
        assert np.all((accs >= 0) & (accs <= 1)) and np.all(per_sample_gain > 0)
        assert np.all(np.diff(per_sample_gain) < 0)  # each extra sample buys less
    assert p.kind == "prior" and isinstance(p, AccuracyPredictor)


def test_prior_ranks_difficulty_and_selectors() -> None:
    p = PriorAccuracyPredictor()
    greedy = StrategyConfig(strategy="single", temperature=0.0)
    easy, hard = p.predict(q("What is 3 + 4?"), [greedy]), p.predict(q("What is 372 + 948?"),
                                                                     [greedy])
    assert easy > hard
    # "first" cannot profit from extra samples; confidence weighting is a little better
    first, majority, conf = p.predict(q("What is 3 + 4?"), [bo(8, "first"), bo(8), bo(8,
                                                                                "confidence")])
    sampled = p.predict(q("What is 3 + 4?"), [StrategyConfig(strategy="single")])[0]
    assert first == pytest.approx(p.p1(q("What is 3 + 4?"))) and sampled < first
    assert first < majority < conf
    errors = StepFeatures.from_text("call it", prompt_tokens=50, previous_tool_errors=2)
    assert p.p1(errors) < p.p1(StepFeatures.from_text("call it", prompt_tokens=50))


def test_prior_penalises_truncation() -> None:
    p = PriorAccuracyPredictor()
    f = StepFeatures.from_text("Explain.", prompt_tokens=50, expected_output_tokens=200)
    short, full = (StrategyConfig(strategy="single", temperature=0.0, max_tokens=m)
                   for m in (50, 256))
    assert p.predict(f, [short])[0] == pytest.approx(p.predict(f, [full])[0] * 0.5)


# -------------------------------------------------------------------- trained
def synthetic_rows(queries: int = 60, seed: int = 0) -> list[TrainingRow]:
    """Soft labels from a known law: accuracy falls with the number's length."""
    rng = random.Random(seed)
    rows = []
    for _ in range(queries):
        digits = rng.randint(1, 3)
        f = q(f"What is {rng.randint(10 ** (digits - 1), 10**digits - 1)} + {rng.randint(1, 9)}?")
        p1 = {1: 0.7, 2: 0.3, 3: 0.03}[digits]
        for c in GRID:
            n = c.n * (c.expansions if c.strategy == "beam" else 1)
            rows.append(TrainingRow(f, c, 1 - (1 - p1) ** (n**0.3)))
    return rows


@pytest.fixture(scope="module")
def logistic() -> SklearnAccuracyPredictor:
    return SklearnAccuracyPredictor(estimator="logistic").fit(synthetic_rows())


@pytest.fixture(scope="module")
def hgb() -> SklearnAccuracyPredictor:
    return SklearnAccuracyPredictor(estimator="hgb").fit(synthetic_rows(80))


@pytest.mark.parametrize("name", ["logistic", "hgb"])
def test_trained_predictor_learns_difficulty(name: str, request: pytest.FixtureRequest) -> None:
    pred: SklearnAccuracyPredictor = request.getfixturevalue(name)
    easy, hard = pred.predict(q("What is 4 + 5?"), GRID), pred.predict(q("What is 481 + 5?"), GRID)
    assert pred.kind == "trained" and isinstance(pred, AccuracyPredictor)
    assert all(0 <= x <= 1 for x in easy + hard)
    assert np.mean(easy) > np.mean(hard) + 0.3


@pytest.mark.parametrize("name", ["logistic", "hgb"])
def test_compiled_prediction_equals_sklearn(name: str, request: pytest.FixtureRequest) -> None:
    pred: SklearnAccuracyPredictor = request.getfixturevalue(name)
    assert pred._fast is not None
    x = design_matrix((q(f"What is {a} * {a + 3}?"), c) for a in (2, 37, 512) for c in GRID)
    np.testing.assert_allclose(pred._fast.predict(pred._inputs(x)), pred.predict_sklearn(x),
                               atol=1e-9)


def test_isotonic_calibration_fits_too() -> None:
    pred = SklearnAccuracyPredictor(estimator="logistic", calibration="isotonic")
    pred.fit(synthetic_rows(40))
    assert all(0 <= x <= 1 for x in pred.predict(q("What is 4 + 5?"), GRID))


def test_save_load_round_trip(tmp_path: Path, hgb: SklearnAccuracyPredictor) -> None:
    path = hgb.save(tmp_path / "p.joblib")
    back = SklearnAccuracyPredictor.load(path)
    f = q("What is 64 + 8?")
    assert back.predict(f, GRID) == hgb.predict(f, GRID)
    assert back.n_rows == hgb.n_rows and back.estimator == "hgb"


def test_shipped_default_predictor_loads_if_present() -> None:
    pred = SklearnAccuracyPredictor.load_default()
    if pred is None:
        pytest.skip("no predictor shipped in tidal_agents/data/")
    accs = pred.predict(q("What is 3 + 4?", "text"), GRID)
    assert len(accs) == len(GRID) and all(0 <= a <= 1 for a in accs)
    # the shipped model was trained on this version's feature vector, in this order
    assert pred.feature_names == FEATURE_NAMES + CONFIG_FEATURE_NAMES
    width = design_matrix([(q("What is 3 + 4?"), GRID[0])]).shape[1]
    assert width == len(FEATURE_NAMES) + len(CONFIG_FEATURE_NAMES)
    for model in pred.parts.values() if pred.per_kind else [pred]:
        assert model._fast is not None  # compiled: decisions stay well under a millisecond
        est = model.model.calibrated_classifiers_[0].estimator
        assert est.n_features_in_ == model._inputs(np.zeros((1, width))).shape[1]
    # every kind of step the chat model runs is covered over the default grid (tool
    # steps: the grid without beam, which the chat model never runs under a grammar)
    names = [c.name for c in GRID]
    sampling = [c.name for c in GRID if c.strategy != "beam"]
    assert pred.covers("text", names)
    assert pred.covers("tool_call", sampling) and pred.covers("tool_answer", sampling)
    chat = StepFeatures.from_text(
        "What is 87 * 28?\nGive the final answer as a single number at the end.",
        prompt_tokens=53, answer_kind="text",
    )
    assert all(0 <= a <= 1 for a in pred.predict(chat, GRID))


def test_trained_predictor_errors(tmp_path: Path) -> None:
    with pytest.raises(TidalConfigError, match="before fit"):
        SklearnAccuracyPredictor().predict(q("x"), GRID)
    with pytest.raises(TidalConfigError, match="Nothing to save"):
        SklearnAccuracyPredictor().save(tmp_path / "x.joblib")
    rows = synthetic_rows(5)
    with pytest.raises(TidalConfigError, match="All soft labels are 0"):
        SklearnAccuracyPredictor().fit([TrainingRow(r.features, r.config, 0.0) for r in rows])
    with pytest.raises(TidalConfigError, match=r"in \[0, 1\]"):
        SklearnAccuracyPredictor().fit([TrainingRow(r.features, r.config, 1.5) for r in rows])
    with pytest.raises(TidalConfigError, match="at least 6"):
        SklearnAccuracyPredictor().fit(rows[:3])
    with pytest.raises(TidalConfigError, match="estimator='mlp'"):
        SklearnAccuracyPredictor(estimator="mlp")  # type: ignore[arg-type]
    import joblib

    joblib.dump({"format": "something-else"}, tmp_path / "other.joblib")
    with pytest.raises(TidalConfigError, match="not a tidal_agents accuracy predictor"):
        SklearnAccuracyPredictor.load(tmp_path / "other.joblib")


# ---------------------------------------------------------------- soft labels
def test_bootstrap_soft_label() -> None:
    answers = ["5", "5", "5", "6", None, "7", "5", "6"]
    correct = [a == "5" for a in answers]
    assert bootstrap_soft_label(["5"] * 4, [True] * 4, 8) == 1.0
    assert bootstrap_soft_label(["6", "7"], [False, False], 8) == 0.0
    one = bootstrap_soft_label(answers, correct, 1, reps=2000, seed=1)
    assert one == pytest.approx(4 / 8, abs=0.04)  # one sample: the pool's accuracy
    many = bootstrap_soft_label(answers, correct, 16, reps=300, seed=1)
    assert many > one  # the plurality answer is right: voting helps
    assert bootstrap_soft_label(answers, correct, 8, seed=3) == bootstrap_soft_label(
        answers, correct, 8, seed=3)
    with pytest.raises(TidalConfigError):
        bootstrap_soft_label(["5"], [True, False], 2)
    with pytest.raises(TidalConfigError, match="n=0"):
        bootstrap_soft_label(["5"], [True], 0)


def test_chat_model_loads_a_trained_predictor_file(
    tmp_path: Path, hgb: SklearnAccuracyPredictor
) -> None:
    from tidal_agents import TidalChatModel

    path = hgb.save(tmp_path / "mine.joblib")
    model = TidalChatModel(predictor_file=str(path))
    loaded = model.accuracy_predictor
    assert loaded.kind == "trained" and isinstance(loaded, SklearnAccuracyPredictor)
    assert loaded.n_rows == hgb.n_rows and loaded.coverage == hgb.coverage
    with pytest.raises(ValueError, match="predictor_file=.*no such file"):  # pydantic's
        TidalChatModel(predictor_file=str(tmp_path / "missing.joblib"))


def test_per_kind_predictor_fits_one_model_per_kind_of_step(tmp_path: Path) -> None:
    from dataclasses import replace

    text = synthetic_rows(40, seed=1)
    # tool steps where samples always pay: a different law, one model per kind learns both
    tool = [TrainingRow(replace(r.features, answer_kind="tool_call"), r.config,
                        0.1 if r.config.n == 1 else 0.9) for r in synthetic_rows(40, seed=2)
            if r.config.strategy != "beam"]
    pred = SklearnAccuracyPredictor(estimator="logistic", per_kind=True).fit(text + tool)
    assert set(pred.parts) == {"math", "tool_call"} and pred.n_rows == len(text) + len(tool)
    names = [c.name for c in GRID]
    assert pred.covers("math", names) and not pred.covers("tool_call", names)
    assert pred.covers("tool_call", [c.name for c in GRID if c.strategy != "beam"])
    greedy, bo16 = GRID[0], next(c for c in GRID if c.name == "bo16-majority")
    call = replace(q("What is 3 + 4?"), answer_kind="tool_call")
    low, high = pred.predict(call, [greedy, bo16])
    assert low < 0.3 < 0.7 < high
    back = SklearnAccuracyPredictor.load(pred.save(tmp_path / "k.joblib"))
    assert back.per_kind and back.coverage == pred.coverage
    assert back.predict(call, [greedy, bo16]) == pred.predict(call, [greedy, bo16])
    with pytest.raises(TidalConfigError, match="no model for steps of kind 'tool_answer'"):
        pred.predict(replace(call, answer_kind="tool_answer"), [greedy])


def test_per_kind_predictor_fits_small_and_one_sided_kinds(tmp_path: Path) -> None:
    """A first, small collection: a kind never right gets a constant 0 (the utility then
    picks the cheapest configuration), a kind with two right rows an uncalibrated model."""
    from dataclasses import replace

    text = synthetic_rows(40, seed=1)
    configs = [c for c in GRID if c.strategy != "beam"]
    never = [TrainingRow(replace(q(f"What is {i} times 7?"), answer_kind="tool_call"), c, 0.0)
             for i in range(4) for c in configs]
    rare = [TrainingRow(replace(q(f"What is {i} times 9?"), answer_kind="tool_answer"), c,
                        1.0 if (i, c.n) in ((0, 1), (1, 2)) else 0.0)
            for i in range(4) for c in configs]
    pred = SklearnAccuracyPredictor(estimator="logistic", per_kind=True).fit(text + never + rare)
    assert pred.parts["tool_call"].model == "constant" and pred.parts["math"].calibrated
    assert not pred.parts["tool_answer"].calibrated and not pred.calibrated
    assert pred.covers("tool_call", [c.name for c in configs])
    call = replace(q("What is 5 times 7?"), answer_kind="tool_call")
    answer = replace(q("What is 5 times 9?"), answer_kind="tool_answer")
    assert pred.predict(call, configs) == [0.0] * len(configs)
    assert all(0.0 <= p <= 1.0 for p in pred.predict(answer, configs))
    back = SklearnAccuracyPredictor.load(pred.save(tmp_path / "small.joblib"))
    assert back.predict(call, configs) == [0.0] * len(configs)
    assert back.predict(answer, configs) == pred.predict(answer, configs)
    assert not back.calibrated and back.parts["math"].calibrated
