"""Per-step trace records: what was chosen, why, what it cost, predicted vs spent."""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

from pydantic import BaseModel, ConfigDict

from tidal_agents.allocation.controller import StepDecision
from tidal_agents.allocation.features import StepFeatures
from tidal_agents.types import CostRecord, StrategyResult


class Spent(BaseModel):
    """What the step really spent (equal to the engine's own counts)."""

    model_config = ConfigDict(frozen=True)

    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    generated_tokens: int = 0
    engine_calls: int = 0
    wall_s: float = 0.0
    #: remote fleets: replicas that answered; requests retried on another replica
    servers: tuple[str, ...] = ()
    engine_retries: int = 0

    @classmethod
    def from_cost(cls, cost: CostRecord) -> Spent:
        """The recorded part of a strategy's cost: every `CostRecord` field but
        ``cut_short``, which the step record carries itself."""
        return cls.model_validate({name: getattr(cost, name) for name in cls.model_fields})


class TraceEvent(BaseModel):
    """Something that happened in an episode outside a model step: a tool that
    raised, a step refused because the deadline had passed."""

    model_config = ConfigDict(frozen=True)

    event: str
    episode_id: str | None
    at: float
    #: the model steps recorded before it
    after_step: int
    detail: dict[str, Any] = {}


class StepRecord(BaseModel):
    """One agent step (one model call)."""

    model_config = ConfigDict(frozen=True)

    episode_id: str | None
    step_index: int
    node: str | None = None
    langgraph_step: int | None = None
    started_at: float
    ended_at: float
    time_left_before_s: float | None = None
    time_left_after_s: float | None = None
    allowance_s: float | None = None
    #: StepDecision.to_dict(): every candidate with predicted acc / tokens / latency /
    #: utility, the choice, the reason, the predictor kind
    decision: dict[str, Any]
    strategy: str
    n: int
    predicted_latency_s: float | None = None
    predicted_tokens: float | None = None
    predicted_accuracy: float | None = None
    spent: Spent | None = None
    #: votes, confidence scores, beam scores, waves: from the strategy
    selection: dict[str, Any] = {}
    cut_short: bool = False
    #: "tool_call", "answer", or "truncated" (an answer cut off by max_tokens or the
    #: step's time); None when the step raised
    finish: str | None = None
    error: str | None = None
    features: dict[str, Any] = {}
    #: names of the tools the step called (the time until the next step is theirs)
    tool_calls: list[str] = []

    @property
    def latency_error(self) -> float | None:
        """(actual - predicted) / predicted wall time, or None."""
        if self.spent is None or not self.predicted_latency_s:
            return None
        return (self.spent.wall_s - self.predicted_latency_s) / self.predicted_latency_s

    @property
    def tokens_error(self) -> float | None:
        """(actual - predicted) / predicted generated tokens, or None."""
        if self.spent is None or not self.predicted_tokens:
            return None
        return (self.spent.generated_tokens - self.predicted_tokens) / self.predicted_tokens

    @property
    def predicted_vs_actual(self) -> dict[str, float | None]:
        """Latency (s) and generated tokens, predicted next to spent."""
        return {
            "predicted_latency_s": self.predicted_latency_s,
            "actual_latency_s": self.spent.wall_s if self.spent else None,
            "predicted_tokens": self.predicted_tokens,
            "actual_tokens": float(self.spent.generated_tokens) if self.spent else None,
        }

    @classmethod
    def from_step(
        cls,
        *,
        episode_id: str | None,
        step_index: int,
        node: str | None,
        langgraph_step: int | None,
        started_at: float,
        ended_at: float,
        time_left_before_s: float | None,
        time_left_after_s: float | None,
        decision: StepDecision,
        result: StrategyResult | None,
        error: str | None,
        features: StepFeatures,
        finish: str | None = None,
    ) -> StepRecord:
        spent = None
        selection: dict[str, Any] = {}
        cut_short = False
        strategy, n = decision.config.name, decision.config.n
        if result is not None:
            spent = Spent.from_cost(result.cost)
            selection = _jsonable(result.details)
            cut_short = result.cost.cut_short
            strategy, n = result.config.name, result.config.n
        return cls(
            episode_id=episode_id,
            step_index=step_index,
            node=node,
            langgraph_step=langgraph_step,
            started_at=started_at,
            ended_at=ended_at,
            time_left_before_s=time_left_before_s,
            time_left_after_s=time_left_after_s,
            allowance_s=decision.allowance_s if math.isfinite(decision.allowance_s) else None,
            decision=decision.to_dict(),
            strategy=strategy,
            n=n,
            predicted_latency_s=decision.predicted_latency_s,
            predicted_tokens=decision.predicted_tokens,
            predicted_accuracy=decision.predicted_accuracy,
            spent=spent,
            selection=selection,
            cut_short=cut_short,
            finish=finish,
            error=error,
            features=asdict(features),
        )


def _jsonable(obj: Any) -> Any:
    """Strategy details may hold tuples, floats like inf, dataclasses: make them JSON."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if hasattr(obj, "__dataclass_fields__"):
        return _jsonable(asdict(obj))
    return str(obj)
