"""Pieces every strategy shares: deadlines, requests, candidates, exact cost sums."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field, replace
from typing import Any

from tidal_agents.engine.types import Engine, GenerationRequest, GenerationResult, Sample
from tidal_agents.errors import TidalConfigError
from tidal_agents.selection.answers import extract_answer
from tidal_agents.strategies.base import StepInput, StrategyRun
from tidal_agents.types import Candidate, CostRecord

#: the engine rejects timeout_s <= 0; a past deadline becomes an immediate abort
_MIN_TIMEOUT_S = 1e-3


def timeout_for(deadline: float | None) -> float | None:
    """Seconds left until `deadline` (absolute monotonic), floored at a tiny positive value."""
    if deadline is None:
        return None
    return max(deadline - time.monotonic(), _MIN_TIMEOUT_S)


def past(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline


def request_for(
    run: StrategyRun,
    *,
    n: int = 1,
    temperature: float | None = None,
    prompt: str | tuple[int, ...] | None = None,
    max_tokens: int | None = None,
    stop: tuple[str, ...] | None = None,
) -> GenerationRequest:
    """The engine request for the run's step under its config; the deadline becomes
    timeout_s."""
    step, config = run.step, run.config
    return GenerationRequest(
        prompt=step.prompt if prompt is None else prompt,
        n=n,
        temperature=config.temperature if temperature is None else temperature,
        max_tokens=config.max_tokens if max_tokens is None else max_tokens,
        stop=step.stop if stop is None else stop,
        # 0 = the sampled token's own log-prob, which is all confidence needs
        logprobs=None if step.logprobs is False else 0,
        guided=step.guided,
        timeout_s=timeout_for(run.deadline),
    )


def to_candidate(sample: Sample, step: StepInput) -> Candidate:
    return Candidate(
        text=sample.text,
        token_ids=sample.token_ids,
        finish_reason=sample.finish_reason,
        answer=extract_answer(sample.text, step.answer_kind),
        mean_logprob=sample.mean_logprob,
        token_logprobs=sample.logprobs,
    )


def tokenized_prompt(run: StrategyRun, strategy: str) -> tuple[Any, tuple[int, ...]]:
    """The engine's tokenizer and the step's prompt as token ids, for the strategies
    that extend token sequences themselves."""
    tok = getattr(run.engine, "tokenizer", None)
    if tok is None or not hasattr(tok, "decode"):
        raise TidalConfigError(
            f"strategy {strategy!r} works on token ids and needs an engine with a "
            f"`tokenizer` (LocalVLLMEngine has one); {type(run.engine).__name__} has none."
        )
    return tok, tuple(tok.encode(run.step.prompt, add_special_tokens=False))


def cost_of(result: GenerationResult) -> CostRecord:
    """The cost of one engine request (its wall time is the strategy's to measure)."""
    attempts = result.extra.get("attempts") or ()
    replica = result.extra.get("replica")
    return CostRecord(
        prompt_tokens=result.prompt_tokens,
        cached_prompt_tokens=result.cached_prompt_tokens,
        generated_tokens=result.generated_tokens,
        engine_calls=1,
        servers=(replica,) if replica else (),
        engine_retries=max(len(attempts) - 1, 0),
    )


@dataclass
class CostMeter:
    """Sums what every engine request reported, so the record equals the engine's counts."""

    started: float = field(default_factory=time.perf_counter)
    spent: CostRecord = field(default_factory=CostRecord)

    def add(self, result: GenerationResult) -> GenerationResult:
        self.spent = self.spent.merged(cost_of(result))
        return result

    async def generate_all(
        self, engine: Engine, requests: list[GenerationRequest]
    ) -> list[GenerationResult]:
        """Issue `requests` concurrently (prefix caching shares their prompt); every
        result is counted, in request order."""
        results = await asyncio.gather(*(engine.generate(r) for r in requests))
        return [self.add(r) for r in results]

    def record(self, cut_short: bool) -> CostRecord:
        return replace(
            self.spent, wall_s=time.perf_counter() - self.started, cut_short=cut_short
        )
