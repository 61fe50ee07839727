"""The contract every decoding strategy follows.

A strategy turns one prepared prompt into candidates, picks one, and reports
exactly what it spent. It must respect the step's deadline: stop early, return
the best candidate so far, and mark the result as cut short.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from tidal_agents.engine.types import Engine, GuidedDecoding, TokenCallback
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
    logprobs: bool = True


class Strategy(Protocol):
    async def __call__(
        self,
        engine: Engine,
        step: StepInput,
        config: StrategyConfig,
        deadline: float | None = None,
        on_token: TokenCallback | None = None,
    ) -> StrategyResult:
        """Run on `engine`. `deadline` is an absolute `time.monotonic()` value."""
        ...
