"""The controller: fits the allowance, responds monotonically to prices, validates input."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidal_agents.allocation import (
    CostModel,
    CostParams,
    PriorAccuracyPredictor,
    StepFeatures,
    decide,
    default_grid,
)
from tidal_agents.errors import TidalConfigError
from tidal_agents.types import StrategyConfig


class TablePredictor:
    """Accuracies drawn by hypothesis: the controller must work for any predictor."""

    kind = "prior"

    def __init__(self, accs: Sequence[float]) -> None:
        self.accs = list(accs)

    def predict(self, features: StepFeatures, configs: Sequence[StrategyConfig]) -> list[float]:
        return self.accs[: len(configs)]


@st.composite
def step_features(draw: st.DrawFn) -> StepFeatures:
    prompt = draw(st.integers(1, 4000))
    return StepFeatures(
        prompt_tokens=prompt,
        cached_prefix_tokens=draw(st.integers(0, prompt)),
        query_chars=draw(st.integers(0, 2000)),
        step_index=draw(st.integers(0, 20)),
        tools_bound=draw(st.integers(0, 10)),
        tool_choice_required=draw(st.booleans()),
        previous_tool_errors=draw(st.integers(0, 4)),
        expected_output_tokens=draw(st.none() | st.integers(1, 512)),
        answer_kind=draw(st.sampled_from(["text", "math", "tool_call"])),
        digits=draw(st.integers(0, 30)),
        max_number_digits=draw(st.integers(0, 10)),
        numbers=draw(st.integers(0, 10)),
        has_math_ops=draw(st.booleans()),
        words=draw(st.integers(0, 500)),
    )


@st.composite
def cost_models(draw: st.DrawFn) -> CostModel:
    pos = st.floats(1e-5, 0.1)
    params = CostParams(
        overhead_s=draw(st.floats(0, 0.5)),
        prefill_s_per_token=draw(st.floats(0, 0.005)),
        decode_step_s=draw(pos),
        decode_token_s=draw(st.floats(0, 0.01)),
    )
    model = CostModel(params=params, load_factor=draw(st.floats(0.2, 5)))
    for c in default_grid():
        model.config_factors[c.name] = draw(st.floats(0.3, 3))
    return model


grids = st.builds(default_grid, max_tokens=st.sampled_from([16, 64, 256, 1024]))
predictors = st.one_of(
    st.just(PriorAccuracyPredictor()),
    st.lists(st.floats(0, 1), min_size=8, max_size=8).map(TablePredictor),
)
lambdas_t = st.floats(0, 1e-2)
lambdas_l = st.floats(0, 1.0)
allowances = st.floats(0, 30)


@given(step_features(), grids, cost_models(), predictors, lambdas_t, lambdas_l, allowances)
@settings(max_examples=300, deadline=None)
def test_chosen_fits_the_allowance_when_any_does(f, grid, cm, pred, lt, ll, allowance) -> None:
    d = decide(f, grid, cm, pred, lt, ll, allowance)
    fitting = [c for c in d.candidates if c.latency_s <= allowance]
    assert len(d.candidates) == len(grid)
    if fitting:
        assert d.any_fits and d.predicted_latency_s <= allowance
        assert d.chosen.utility == max(c.utility for c in fitting)
    else:
        assert not d.any_fits and "none fits" in d.reason
        assert d.predicted_latency_s == min(c.latency_s for c in d.candidates)
    assert d.config in grid and d.decision_time_s > 0


@given(step_features(), grids, cost_models(), predictors, lambdas_t, lambdas_l, allowances,
       st.floats(0.01, 100), st.floats(1e-7, 1e-2))
@settings(max_examples=300, deadline=None)
def test_raising_lambda_tokens_never_raises_chosen_tokens(
    f, grid, cm, pred, lt, ll, allowance, rel, add
) -> None:
    low = decide(f, grid, cm, pred, lt, ll, allowance)
    high = decide(f, grid, cm, pred, lt * (1 + rel) + add, ll, allowance)
    assert high.predicted_tokens <= low.predicted_tokens


@given(step_features(), grids, cost_models(), predictors, lambdas_t, lambdas_l, allowances,
       st.floats(0.01, 100), st.floats(1e-4, 1.0))
@settings(max_examples=300, deadline=None)
def test_raising_lambda_latency_never_raises_chosen_latency(
    f, grid, cm, pred, lt, ll, allowance, rel, add
) -> None:
    low = decide(f, grid, cm, pred, lt, ll, allowance)
    high = decide(f, grid, cm, pred, lt, ll * (1 + rel) + add, allowance)
    assert high.predicted_latency_s <= low.predicted_latency_s


@given(step_features(), cost_models(), st.floats(0, 30))
@settings(max_examples=100, deadline=None)
def test_decide_is_a_pure_function(f, cm, allowance) -> None:
    grid = default_grid()
    a = decide(f, grid, cm, PriorAccuracyPredictor(), 1e-4, 0.05, allowance)
    b = decide(f, grid, cm, PriorAccuracyPredictor(), 1e-4, 0.05, allowance)
    assert (a.config, a.reason, a.candidates) == (b.config, b.reason, b.candidates)


def test_free_compute_buys_the_most_accurate_and_prices_push_to_greedy() -> None:
    f = StepFeatures.from_text("What is 37 + 48?", prompt_tokens=60, answer_kind="math")
    grid, cm, pred = default_grid(64), CostModel.default(), PriorAccuracyPredictor()
    free = decide(f, grid, cm, pred, 0.0, 0.0, math.inf)
    assert free.predicted_accuracy == max(c.accuracy for c in free.candidates)
    pricey = decide(f, grid, cm, pred, 1.0, 1.0, math.inf)
    assert pricey.config.name == "greedy"
    assert "max utility" in pricey.reason and pricey.predictor_kind == "prior"


def test_tight_allowance_excludes_slow_configs() -> None:
    f = StepFeatures.from_text("What is 37 + 48?", prompt_tokens=60, answer_kind="math")
    grid, cm = default_grid(64), CostModel.default()
    loose = decide(f, grid, cm, PriorAccuracyPredictor(), 0.0, 0.0, math.inf)
    tight_allowance = min(c.latency_s for c in loose.candidates) * 1.001
    tight = decide(f, grid, cm, PriorAccuracyPredictor(), 0.0, 0.0, tight_allowance)
    assert tight.any_fits and [c.name for c in tight.candidates if c.fits] == [tight.config.name]
    assert loose.predicted_latency_s > tight_allowance  # the free choice would not have fit


def test_decision_dict_lists_every_candidate() -> None:
    f = StepFeatures.from_text("hello", prompt_tokens=10)
    d = decide(f, default_grid(), CostModel.default(), PriorAccuracyPredictor(), 1e-4, 0.05,
               math.inf)
    out = d.to_dict()
    assert out["chosen"] == d.config.name and out["allowance_s"] is None  # inf -> JSON null
    assert [c["name"] for c in out["candidates"]] == [c.name for c in default_grid()]
    assert set(out["candidates"][0]) >= {"accuracy", "tokens", "latency_s", "utility", "fits"}


@pytest.mark.parametrize("bad", [math.nan, -1e-4, math.inf, -math.inf, True, "0.1", None])
def test_bad_lambdas_are_typed_errors(bad: object) -> None:
    f = StepFeatures(prompt_tokens=10)
    args = (f, default_grid(), CostModel.default(), PriorAccuracyPredictor())
    with pytest.raises(TidalConfigError, match=r"lambda_tokens=.*allowed is a finite number"):
        decide(*args, bad, 0.05, 1.0)  # type: ignore[arg-type]
    with pytest.raises(TidalConfigError, match=r"lambda_latency=.*allowed is a finite number"):
        decide(*args, 1e-4, bad, 1.0)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [math.nan, -0.5, "3"])
def test_bad_allowance_is_a_typed_error(bad: object) -> None:
    f = StepFeatures(prompt_tokens=10)
    with pytest.raises(TidalConfigError, match="allowance_s="):
        decide(f, default_grid(), CostModel.default(), PriorAccuracyPredictor(), 0, 0, bad)  # type: ignore[arg-type]


def test_empty_grid_and_short_predictor_are_errors() -> None:
    f = StepFeatures(prompt_tokens=10)
    with pytest.raises(TidalConfigError, match="grid is empty"):
        decide(f, (), CostModel.default(), PriorAccuracyPredictor(), 0, 0, 1.0)
    with pytest.raises(TidalConfigError, match="returned 2 values for 8"):
        decide(f, default_grid(), CostModel.default(), TablePredictor([0.5, 0.5]), 0, 0, 1.0)


def test_latency_headroom_makes_near_misses_not_fit() -> None:
    cm = CostModel.default()
    grid = default_grid(max_tokens=64)
    f = StepFeatures(prompt_tokens=100, query_chars=40, answer_kind="math")
    pred = PriorAccuracyPredictor()
    lat = {c.name: cm.predict(c, f).latency_s for c in grid}
    slowest = max(grid, key=lambda c: lat[c.name])
    allowance = lat[slowest.name] * 1.05  # everything fits, just
    plain = decide(f, grid, cm, pred, 0.0, 0.0, allowance)
    padded = decide(f, grid, cm, pred, 0.0, 0.0, allowance, latency_headroom=1.3)
    assert all(c.fits for c in plain.candidates)
    assert not next(c for c in padded.candidates if c.name == slowest.name).fits
    assert padded.latency_headroom == 1.3 and "headroom x1.30" in padded.reason
    assert padded.to_dict()["latency_headroom"] == 1.3
    assert lat[padded.config.name] * 1.3 <= allowance
    for bad in (0.5, math.nan, math.inf, True, "2"):
        with pytest.raises(TidalConfigError, match="latency_headroom"):
            decide(f, grid, cm, pred, 0.0, 0.0, allowance, latency_headroom=bad)  # type: ignore[arg-type]
