"""The contract every decoding strategy follows.

A strategy turns one prepared prompt into candidates, picks one, and reports
exactly what it spent. It must respect the step's deadline: stop early, return
the best candidate so far, and mark the result as cut short.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from tidal_agents.engine.types import Engine, GuidedDecoding, TokenCallback
from tidal_agents.selection.scorers import Scorer
from tidal_agents.types import (
    AnswerKind,
    Candidate,
    CostRecord,
    SelectorName,
    StrategyConfig,
    StrategyName,
    StrategyResult,
)

__all__ = [
    "AnswerKind",
    "Candidate",
    "CostRecord",
    "SelectorName",
    "StepInput",
    "Strategy",
    "StrategyRun",
    "StrategyConfig",
    "StrategyName",
    "StrategyResult",
]


@dataclass(frozen=True)
class StepInput:
    """A prepared prompt plus how to constrain and compare outputs."""

    prompt: str
    guided: GuidedDecoding | None = None
    stop: tuple[str, ...] = ()
    answer_kind: AnswerKind = "text"
    #: the sampled tokens' log-probs: None = where the strategy compares candidates
    #: by them (every strategy but `single`, whose one sample is never compared),
    #: True = always, False = never
    logprobs: bool | None = None


@dataclass(frozen=True)
class StrategyRun:
    """One strategy call: what every strategy is given."""

    engine: Engine
    step: StepInput
    config: StrategyConfig
    #: an absolute ``time.monotonic()`` value: stop there, best candidate so far
    deadline: float | None = None
    #: ``on_token(sample_index, text_delta)``; only `single` streams
    on_token: TokenCallback | None = None
    #: serves selector="scorer" and beam pruning
    scorer: Scorer | None = None


class Strategy(Protocol):
    async def __call__(self, run: StrategyRun, **options: Any) -> StrategyResult:
        """Run `run.config` on `run.engine`; `options` are the strategy's own
        settings (e.g. beam's `delimiter`)."""
        ...
