"""The per-step decision: which configuration to run within the step's allowance.

utility(m) = acc_hat(m) - lambda_T * tokens_hat(m) - lambda_L * latency_hat(m)
(docs/design-notes.md, 'The allocation rule'), maximised over the configurations
whose predicted latency fits the allowance and, under a token budget, whose predicted
generated tokens fit what is left of it. When none fits, the fastest one runs
(an agent step must produce something; the strategy itself stops at the
deadline); when none fits the token budget, the one with the fewest predicted
tokens runs.

`decide` is a pure function of its inputs (the clock is read only to report how
long deciding took), so a trace can be replayed exactly.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from tidal_agents.allocation.cost_model import CostModel
from tidal_agents.allocation.features import StepFeatures
from tidal_agents.allocation.predictor import AccuracyPredictor
from tidal_agents.errors import TidalConfigError
from tidal_agents.types import StrategyConfig
from tidal_agents.validation import check_number, is_finite_number


@dataclass(frozen=True)
class CandidateEstimate:
    """The controller's view of one configuration for one step."""

    name: str
    config: StrategyConfig
    accuracy: float
    tokens: float
    latency_s: float
    utility: float
    fits: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "strategy": self.config.strategy,
            "n": self.config.n,
            "selector": self.config.selector,
            "accuracy": self.accuracy,
            "tokens": self.tokens,
            "latency_s": self.latency_s,
            "utility": self.utility,
            "fits": self.fits,
        }


@dataclass(frozen=True)
class StepDecision:
    """What the controller chose for one step, and everything it weighed."""

    config: StrategyConfig
    reason: str
    allowance_s: float
    candidates: tuple[CandidateEstimate, ...]
    predictor_kind: str
    lambda_tokens: float
    lambda_latency: float
    decision_time_s: float
    #: False when no configuration's predicted latency fit the allowance
    any_fits: bool = True
    #: predicted latencies were multiplied by this before the fit test
    latency_headroom: float = 1.0
    #: generated tokens left in the episode's token budget (None: no budget)
    tokens_left: float | None = None

    @property
    def chosen(self) -> CandidateEstimate:
        name = self.config.name
        return next(c for c in self.candidates if c.name == name)

    @property
    def predicted_latency_s(self) -> float:
        return self.chosen.latency_s

    @property
    def predicted_tokens(self) -> float:
        return self.chosen.tokens

    @property
    def predicted_accuracy(self) -> float:
        return self.chosen.accuracy

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form stored in trace records."""
        return {
            "chosen": self.config.name,
            "config": asdict(self.config),
            "reason": self.reason,
            "allowance_s": _json_float(self.allowance_s),
            "any_fits": self.any_fits,
            "latency_headroom": self.latency_headroom,
            "tokens_left": self.tokens_left,
            "predictor_kind": self.predictor_kind,
            "lambda_tokens": self.lambda_tokens,
            "lambda_latency": self.lambda_latency,
            "decision_time_s": self.decision_time_s,
            "predicted_accuracy": self.predicted_accuracy,
            "predicted_tokens": self.predicted_tokens,
            "predicted_latency_s": self.predicted_latency_s,
            "candidates": [c.to_dict() for c in self.candidates],
        }


def check_lambda(name: str, value: Any) -> float:
    """A price: a finite number >= 0 (NaN, inf, negatives and bools are refused)."""
    check_number(name, value, lo=0)
    return float(value)


def check_allowance(value: Any) -> float:
    """Seconds >= 0; math.inf means no deadline."""
    if not (is_finite_number(value) or value == math.inf) or value < 0:
        raise TidalConfigError(
            f"allowance_s={value!r}: allowed is a number >= 0 (math.inf for no deadline)."
        )
    return float(value)


def decide(
    features: StepFeatures,
    grid: Sequence[StrategyConfig],
    cost_model: CostModel,
    predictor: AccuracyPredictor,
    lambda_tokens: float,
    lambda_latency: float,
    allowance_s: float,
    latency_headroom: float = 1.0,
    max_tokens_left: float | None = None,
) -> StepDecision:
    """Choose the configuration of maximum utility among those that fit `allowance_s`.

    A configuration fits when its predicted latency times `latency_headroom`
    (>= 1; `CostModel.latency_headroom`, from how far recent steps overran their
    predictions) is within the allowance and, when `max_tokens_left` is given
    (an episode's token budget), its predicted generated tokens are at most
    that. Ties go to the lower predicted latency, then to the earlier grid
    entry. When none fits: the fastest among those within the token budget, or,
    when none is, the one with the fewest predicted tokens.
    """
    t0 = time.perf_counter()
    lt = check_lambda("lambda_tokens", lambda_tokens)
    ll = check_lambda("lambda_latency", lambda_latency)
    allowance = check_allowance(allowance_s)
    check_number("latency_headroom", latency_headroom, lo=1, hi=100)
    headroom = float(latency_headroom)
    check_number("max_tokens_left", max_tokens_left, allow_none=True)
    tokens_left = None if max_tokens_left is None else float(max_tokens_left)
    if not grid:
        raise TidalConfigError("The allocation grid is empty; pass at least one StrategyConfig.")
    accs = predictor.predict(features, grid)
    if len(accs) != len(grid):
        raise TidalConfigError(
            f"The accuracy predictor returned {len(accs)} values for {len(grid)} configurations."
        )
    cands = []
    for config, acc in zip(grid, accs, strict=True):
        cost = cost_model.predict(config, features)
        cands.append(
            CandidateEstimate(
                name=config.name,
                config=config,
                accuracy=acc,
                tokens=cost.tokens,
                latency_s=cost.latency_s,
                utility=acc - lt * cost.tokens - ll * cost.latency_s,
                fits=cost.latency_s * headroom <= allowance
                and (tokens_left is None or cost.tokens <= tokens_left),
            )
        )
    order = range(len(cands))
    fitting = [i for i in order if cands[i].fits]
    within_tokens = [
        i for i in order if tokens_left is None or cands[i].tokens <= tokens_left
    ]
    if fitting:
        best = min(fitting, key=lambda i: (-cands[i].utility, cands[i].latency_s, i))
        c = cands[best]
        margin = f" with latency headroom x{headroom:.2f}" if headroom > 1.0 else ""
        reason = (
            f"max utility among {len(fitting)}/{len(cands)} configurations fitting the "
            f"allowance {allowance:.2f}s{margin}: {c.name} (acc {c.accuracy:.2f}, "
            f"{c.tokens:.0f} tok, {c.latency_s:.2f}s, utility {c.utility:.3f})"
        )
        if tokens_left is not None:
            reason += f"; {tokens_left:.0f} tokens left"
    elif within_tokens:
        best = min(within_tokens, key=lambda i: (cands[i].latency_s, i))
        c = cands[best]
        reason = (
            f"none fits the allowance {allowance:.2f}s: running the fastest, {c.name} "
            f"({c.latency_s:.2f}s predicted)"
        )
    else:
        best = min(order, key=lambda i: (cands[i].tokens, cands[i].latency_s, i))
        c = cands[best]
        reason = (
            f"none fits the token budget ({tokens_left:.0f} tokens left): running the "
            f"cheapest in tokens, {c.name} ({c.tokens:.0f} tok predicted)"
        )
    return StepDecision(
        config=c.config,
        reason=reason,
        allowance_s=allowance,
        candidates=tuple(cands),
        predictor_kind=str(getattr(predictor, "kind", "unknown")),
        lambda_tokens=lt,
        lambda_latency=ll,
        decision_time_s=time.perf_counter() - t0,
        any_fits=bool(fitting),
        latency_headroom=headroom,
        tokens_left=tokens_left,
    )


def _json_float(x: float) -> float | None:
    # JSON has no infinity: an unlimited allowance is written as null
    return x if math.isfinite(x) else None
