"""Decide: the step's configuration and budget, in one place.

Inside an episode the episode's allowance bounds the step; outside one, the
model's per-call ``timeout`` does (or nothing). Pure: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
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
    #: utility costs of a generated token and of a second of predicted latency: the
    #: lambdas `bench allocation`'s rule picks on all collected steps (the cheapest in
    #: output tokens within 0.01 of the best fixed strategy's accuracy), rounded
    lambda_tokens: float = 2e-4
    lambda_latency: float = 0.01
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
    """The trained predictor wherever its training data covers the step: steps of its
    kind under every configuration of the grid (`SklearnAccuracyPredictor.covers`; the
    shipped predictor covers every kind of step the chat model runs over the default
    grid). Elsewhere the documented prior decides, and the decision records
    ``predictor_kind`` "prior"."""
    covers = getattr(predictor, "covers", None)
    if getattr(predictor, "kind", "") == "trained" and covers is not None and not covers(
        features.answer_kind, [c.name for c in grid]
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


@dataclass(frozen=True)
class WrapUp:
    """Why a step answers with what it has instead of calling another tool."""

    time_left_s: float
    #: a tool-call step, its tools and an answer step, as predicted
    round_trip_s: float

    def reason(self) -> str:
        return (
            f"wrap-up: {self.time_left_s:.2f} s left cannot fit another tool round trip "
            f"and an answer ({self.round_trip_s:.2f} s predicted), so the step answers"
        )


def wrap_up(
    features: StepFeatures,
    tool_choice_mode: str,
    max_tokens: int,
    episode: Episode | None,
    cost_model: CostModel,
) -> WrapUp | None:
    """A WrapUp when tools may be called (tool_choice "auto") but the episode's
    time above its margin cannot fit a greedy tool-call step, a slow tool round
    (`Episode.tool_round_upper_s`) and a greedy answer step; None otherwise."""
    if episode is None or tool_choice_mode != "auto" or features.tools_bound == 0:
        return None
    greedy = StrategyConfig("single", temperature=0.0, max_tokens=max_tokens)
    step_s = cost_model.predict(greedy, features).latency_s * cost_model.latency_headroom()
    tool_s = episode.tool_round_upper_s(tools_bound=True)
    needed = 2 * step_s + tool_s
    time_left = episode.remaining_s() - episode.safety_margin_s
    return WrapUp(time_left_s=time_left, round_trip_s=needed) if time_left < needed else None


def rest_of_episode_s(
    features: StepFeatures, calls_tools: bool, max_tokens: int, episode: Episode,
    cost_model: CostModel, slow_tools: bool = True,
) -> float:
    """The least time the episode needs after this step: when the step may call a
    tool, a tool round and a greedy answer step (with the latency headroom); else
    nothing. The round is a slow one (`Episode.tool_round_upper_s`, for reserves
    that must hold) unless `slow_tools` is False (the mean, `Episode.tool_round_s`)."""
    if not calls_tools:
        return 0.0
    greedy = StrategyConfig("single", temperature=0.0, max_tokens=max_tokens)
    answer_s = cost_model.predict(greedy, features).latency_s * cost_model.latency_headroom()
    if slow_tools:
        return episode.tool_round_upper_s(tools_bound=True) + answer_s
    return episode.tool_round_s(tools_bound=True) + answer_s


def stretch_when_nothing_fits(
    decision: StepDecision, rest_s: float, episode: Episode | None
) -> StepDecision:
    """When no configuration fits the step's share of the episode, the fastest one
    runs (see `decide`); cutting it at that share would very likely leave nothing.
    It may run as long as the episode can spare instead: the time above the safety
    margin less `rest_s`, what the rest of the episode needs at least."""
    if episode is None or decision.any_fits or not math.isfinite(decision.allowance_s):
        return decision
    spare = episode.remaining_s() - episode.safety_margin_s - rest_s
    if spare <= decision.allowance_s:
        return decision
    return replace(
        decision,
        allowance_s=spare,
        reason=f"{decision.reason}; allowance stretched from {decision.allowance_s:.2f}s "
               f"to {spare:.2f}s (the time the episode can spare, {rest_s:.2f}s kept for "
               "the rest)",
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
