"""vLLM's own token-level beam search, reimplemented over our engine for comparison.

vLLM 0.32 has no beam search on ``AsyncLLM`` (``EngineClient`` has none); the
online server's ``BeamSearchOnlineMixin.beam_search``
(vllm/entrypoints/generate/beam_search/online.py) is a Python loop over the
engine, and this is that loop, step for step:

- every round, each live beam is one request for ONE token with the top
  ``2 * width`` log-probs (temperature 0 by default, as ``BeamSearchParams``),
  all beams' requests issued concurrently;
- every (beam, top token) pair is a candidate with cumulative log-prob; an EOS
  candidate moves to `completed` (EOS not kept in the text);
- the best `width` non-EOS candidates become the next beams;
- it runs for `max_tokens` rounds (vLLM does not stop once `width` beams have
  completed), then ranks completed + live beams by
  ``cum_logprob / len(prompt + tokens) ** length_penalty``
  (``get_beam_search_score``) and returns the best.

As in vLLM there are no stop strings and no grammar. The deadline is ours:
each round's requests carry the time left, and on expiry the best beam so far
is returned, cut short.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tidal_agents.engine.types import MAX_TOP_LOGPROBS, GenerationRequest, GenerationResult
from tidal_agents.errors import TidalConfigError
from tidal_agents.selection.answers import extract_answer
from tidal_agents.strategies._common import CostMeter, past, timeout_for, tokenized_prompt
from tidal_agents.strategies.base import StepInput, StrategyRun
from tidal_agents.types import Candidate, StrategyResult


@dataclass(frozen=True)
class _Seq:
    tokens: tuple[int, ...]  # prompt + generated, as vLLM's BeamSearchSequence
    logprobs: tuple[float, ...] = ()
    cum_logprob: float = 0.0
    finish: str | None = None


def beam_score(seq: _Seq, eos: int | None, length_penalty: float) -> float:
    """vLLM's get_beam_search_score: length includes the prompt, not a final EOS."""
    n = len(seq.tokens) - (1 if seq.tokens and seq.tokens[-1] == eos else 0)
    return seq.cum_logprob / (max(n, 1) ** length_penalty)


def _expand(
    beams: list[_Seq], results: list[GenerationResult], eos: int | None, completed: list[_Seq]
) -> list[_Seq]:
    """Every (beam, top token) pair of one round; EOS pairs go to `completed`."""
    candidates: list[_Seq] = []
    for beam, r in zip(beams, results, strict=True):
        top = r.samples[0].top_logprobs[0] if r.samples[0].top_logprobs else {}
        for token_id, lp in top.items():
            cum = beam.cum_logprob + lp
            if token_id == eos:
                completed.append(_Seq(beam.tokens, beam.logprobs + (lp,), cum, "stop"))
            else:
                candidates.append(_Seq(beam.tokens + (token_id,), beam.logprobs + (lp,), cum))
    return candidates


def _candidate(
    s: _Seq, prompt_len: int, tok: Any, step: StepInput, unfinished: str, score: float
) -> Candidate:
    gen = s.tokens[prompt_len:]
    text = tok.decode(list(gen), skip_special_tokens=True)
    return Candidate(
        text=text,
        token_ids=gen,
        finish_reason=s.finish or unfinished,
        answer=extract_answer(text, step.answer_kind),
        score=score,
        mean_logprob=sum(s.logprobs) / len(s.logprobs) if s.logprobs else None,
        token_logprobs=s.logprobs,
    )


async def vllm_beam(
    run: StrategyRun, *, length_penalty: float = 1.0, temperature: float = 0.0, **_: Any
) -> StrategyResult:
    # beams change every token, so there is nothing to stream: run.on_token is not used
    width = run.config.n
    if 2 * width > MAX_TOP_LOGPROBS:
        raise TidalConfigError(
            f"vllm_beam width n={width}: it needs 2*width top log-probs per token and vLLM's "
            f"max_logprobs is {MAX_TOP_LOGPROBS}; allowed is n <= {MAX_TOP_LOGPROBS // 2}."
        )
    if run.step.guided is not None:
        raise TidalConfigError("strategy 'vllm_beam' has no guided decoding (as in vLLM).")
    tok, prompt_ids = tokenized_prompt(run, "vllm_beam")
    eos = tok.eos_token_id
    meter = CostMeter()
    beams: list[_Seq] = [_Seq(prompt_ids)]
    completed: list[_Seq] = []
    rounds, cut = 0, False

    for _round in range(run.config.max_tokens):
        if past(run.deadline):
            cut = True
            break
        requests = [
            GenerationRequest(
                prompt=b.tokens,
                max_tokens=1,
                logprobs=2 * width,
                temperature=temperature,
                timeout_s=timeout_for(run.deadline),
            )
            for b in beams
        ]
        results = await meter.generate_all(run.engine, requests)
        rounds += 1
        if any(r.timed_out for r in results):  # vLLM stops on an aborted beam, as here
            cut = True
            break
        # stable sort: equal log-probs keep the order vLLM's argsort would meet them
        beams = sorted(_expand(beams, results, eos, completed), key=lambda c: -c.cum_logprob)
        beams = beams[:width]
        if not beams:
            break

    ranked = sorted(completed + beams, key=lambda s: -beam_score(s, eos, length_penalty))
    unfinished = "timeout" if cut else "length"
    candidates = tuple(
        _candidate(s, len(prompt_ids), tok, run.step, unfinished,
                   beam_score(s, eos, length_penalty))
        for s in ranked[:width] or [_Seq(prompt_ids)]
    )
    return StrategyResult(
        selected=candidates[0],
        candidates=candidates,
        cost=meter.record(cut_short=cut),
        config=run.config,
        details={
            "rounds": rounds,
            "completed": len(completed),
            "length_penalty": length_penalty,
            "best_score": candidates[0].score if candidates else -math.inf,
        },
    )
