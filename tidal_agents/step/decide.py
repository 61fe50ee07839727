"""Decide: the step's configuration and budget, in one place.

Inside an episode the episode's allowance bounds the step; outside one, the
model's per-call ``timeout`` does (or nothing). Pure: no I/O but reading the
shipped predictor's report once.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from importlib.resources import files
from typing import Any

from tidal_agents.allocation import (
    CostModel,
    PriorAccuracyPredictor,
    StepFeatures,
    default_grid,
)
from tidal_agents.allocation.controller import StepDecision, decide
from tidal_agents.allocation.predictor import AccuracyPredictor
from tidal_agents.episode import Episode
from tidal_agents.types import StrategyConfig


@dataclass(frozen=True)
class AllocationSettings:
    """The chat model's allocation settings a step decides with."""

    #: fixes one strategy for every step (no allocation)
    strategy: StrategyConfig | None = None
    #: configurations to choose among (None: allocation.default_grid)
    grid: tuple[StrategyConfig, ...] | None = None
    lambda_tokens: float = 1e-4
    lambda_latency: float = 0.05
    #: per-call limit in seconds when no episode applies
    timeout: float | None = None
    #: temperature of single-sample steps (None: greedy)
    temperature: float | None = None


def step_grid(
    settings: AllocationSettings, max_tokens: int, guided: bool
) -> tuple[StrategyConfig, ...]:
    if settings.strategy is not None:
        return (settings.strategy,)
    grid = settings.grid or default_grid(max_tokens=max_tokens)
    if guided:
        # A grammar cannot be resumed across beam steps: sampling strategies only.
        grid = tuple(c for c in grid if c.strategy in ("single", "best_of_n"))
    return grid


def predictor_for(
    predictor: AccuracyPredictor, features: StepFeatures, grid: Sequence[StrategyConfig]
) -> AccuracyPredictor:
    """The trained predictor only where it was trained: free-text answers over
    configurations it has seen. Tool and structured steps, and grids with
    unseen configurations (beam), use the documented prior."""
    if getattr(predictor, "kind", "") == "trained" and (
        features.answer_kind != "text" or not {c.name for c in grid} <= trained_configs()
    ):
        return _PRIOR
    return predictor


def decide_step(
    settings: AllocationSettings,
    features: StepFeatures,
    grid: Sequence[StrategyConfig],
    episode: Episode | None,
    cost_model: CostModel,
    predictor: AccuracyPredictor,
) -> StepDecision:
    """The decision under the episode's allowance, or the per-call timeout."""
    chosen_predictor = predictor_for(predictor, features, grid)
    if episode is not None:
        return episode.decide(features, cost_model, chosen_predictor, grid)
    allowance = settings.timeout if settings.timeout is not None else math.inf
    return decide(
        features, grid, cost_model, chosen_predictor,
        settings.lambda_tokens, settings.lambda_latency, allowance,
        latency_headroom=cost_model.latency_headroom(),
    )


def fit_config(
    settings: AllocationSettings, config: StrategyConfig, max_tokens: int
) -> StrategyConfig:
    """Apply the call's token room and the user's temperature."""
    if settings.strategy is not None:
        config = settings.strategy
    update: dict[str, Any] = {"max_tokens": min(config.max_tokens, max_tokens)}
    if config.strategy == "single":
        update["temperature"] = settings.temperature or 0.0
    return replace(config, **update)


_PRIOR = PriorAccuracyPredictor()


@functools.lru_cache(maxsize=1)
def trained_configs() -> frozenset[str]:
    """Configuration names the shipped predictor was trained on."""
    try:
        report = files("tidal_agents").joinpath("data/accuracy_predictor.json").read_text()
        return frozenset(json.loads(report).get("configs", []))
    except (OSError, ValueError):
        return frozenset()
