"""Pieces every strategy shares: deadlines, requests, candidates, exact cost sums."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from tidal_agents.engine.types import GenerationRequest, GenerationResult, Sample
from tidal_agents.errors import TidalConfigError
from tidal_agents.selection.answers import extract_answer
from tidal_agents.strategies.base import StepInput
from tidal_agents.types import Candidate, CostRecord, StrategyConfig

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
    step: StepInput,
    config: StrategyConfig,
    deadline: float | None,
    *,
    n: int = 1,
    temperature: float | None = None,
    prompt: str | tuple[int, ...] | None = None,
    max_tokens: int | None = None,
    stop: tuple[str, ...] | None = None,
) -> GenerationRequest:
    """The engine request for `step` under `config`; the deadline becomes timeout_s."""
    return GenerationRequest(
        prompt=step.prompt if prompt is None else prompt,
        n=n,
        temperature=config.temperature if temperature is None else temperature,
        max_tokens=config.max_tokens if max_tokens is None else max_tokens,
        stop=step.stop if stop is None else stop,
        # 0 = the sampled token's own log-prob, which is all confidence needs
        logprobs=0 if step.logprobs else None,
        guided=step.guided,
        timeout_s=timeout_for(deadline),
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


def require_tokenizer(engine: Any, strategy: str) -> Any:
    tok = getattr(engine, "tokenizer", None)
    if tok is None or not hasattr(tok, "decode"):
        raise TidalConfigError(
            f"strategy {strategy!r} works on token ids and needs an engine with a "
            f"`tokenizer` (LocalVLLMEngine has one); {type(engine).__name__} has none."
        )
    return tok


@dataclass
class CostMeter:
    """Sums what every engine request reported, so the record equals the engine's counts."""

    started: float = field(default_factory=time.perf_counter)
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    generated_tokens: int = 0
    engine_calls: int = 0
    timed_out: bool = False
    servers: list[str] = field(default_factory=list)
    engine_retries: int = 0

    def add(self, result: GenerationResult) -> GenerationResult:
        self.prompt_tokens += result.prompt_tokens
        self.cached_prompt_tokens += result.cached_prompt_tokens
        self.generated_tokens += result.generated_tokens
        self.engine_calls += 1
        self.timed_out = self.timed_out or result.timed_out
        attempts = result.extra.get("attempts") or ()
        self.engine_retries += max(len(attempts) - 1, 0)
        if result.extra.get("replica") and result.extra["replica"] not in self.servers:
            self.servers.append(result.extra["replica"])
        return result

    def record(self, cut_short: bool) -> CostRecord:
        return CostRecord(
            prompt_tokens=self.prompt_tokens,
            cached_prompt_tokens=self.cached_prompt_tokens,
            generated_tokens=self.generated_tokens,
            engine_calls=self.engine_calls,
            wall_s=time.perf_counter() - self.started,
            cut_short=cut_short,
            servers=tuple(self.servers),
            engine_retries=self.engine_retries,
        )
