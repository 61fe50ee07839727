"""Step-level beam search, in the style of huggingface/search-and-learn.

A step ends at a delimiter (default a blank line). Round 1 draws width x
expansions first steps from the prompt in one request. Each later round expands
every live beam with `expansions` samples, one batched request per beam, all
issued concurrently (prefix caching reuses the shared prompt and trace). Partial
traces are scored by their mean token log-prob (or a pluggable `Scorer`, e.g. a
process reward model), the best width - completed survive, the rest are pruned.

A beam completes when it ends with EOS or a caller stop string, states a final
answer (\\boxed{}, "the answer is"), or spends its `max_tokens`. The search ends
when `width` beams have completed, none is live, `max_rounds` is reached, or the
deadline passes. It returns the best completed beam, or else the best partial
one, marked cut short. Every generated token is counted, pruned beams included.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, replace
from typing import Any

from tidal_agents.engine.types import Sample
from tidal_agents.errors import TidalConfigError
from tidal_agents.selection.answers import extract_answer, has_final_answer
from tidal_agents.selection.scorers import Scorer
from tidal_agents.strategies._common import CostMeter, past, request_for, tokenized_prompt
from tidal_agents.strategies.base import StepInput, StrategyRun
from tidal_agents.types import Candidate, StrategyResult

DELIMITER = "\n\n"
#: search-and-learn's default depth
MAX_ROUNDS = 40


@dataclass(frozen=True)
class Beam:
    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    #: None while live; stop | length when complete; timeout | abort when cut off
    finish: str | None = None
    score: float = -math.inf
    #: tokens the latest round added (what pruning this beam wastes)
    step_tokens: int = 0

    @property
    def mean_logprob(self) -> float | None:
        lps = [x for x in self.logprobs if not math.isnan(x)]
        return sum(lps) / len(lps) if lps else None


def _extend(
    parent: Beam,
    s: Sample,
    step: StepInput,
    delimiter: str,
    tok: Any,
    special: set[int],
    max_tokens: int,
) -> Beam:
    """The child beam `parent` + sample, with its completion status."""
    ids = parent.token_ids + s.token_ids
    lps = parent.logprobs + s.logprobs
    text = parent.text + s.text
    finish: str | None = None
    if s.finish_reason in ("timeout", "abort", "length"):
        finish = s.finish_reason
    elif s.token_ids and s.token_ids[-1] in special:
        finish = "stop"  # EOS
    else:
        # Text stops before the stop string; decoding the ids shows which one hit.
        tail = tok.decode(list(s.token_ids), skip_special_tokens=True)[len(s.text) :]
        if any(tail.startswith(st) for st in step.stop):
            finish = "stop"
        else:
            text += delimiter
            if step.answer_kind == "math" and has_final_answer(text):
                finish = "stop"
    if finish is None and len(ids) >= max_tokens:
        finish = "length"
    return Beam(text, ids, lps, finish, step_tokens=len(s.token_ids))


async def _score(children: list[Beam], step: StepInput, scorer: Scorer | None) -> list[Beam]:
    if scorer is None:
        scores = [b.mean_logprob if b.mean_logprob is not None else -math.inf for b in children]
    else:
        # a reward model is heavy and synchronous: keep it off the event loop
        scores = await asyncio.to_thread(scorer.score, step.prompt, [b.text for b in children])
    return [replace(b, score=float(sc)) for b, sc in zip(children, scores, strict=True)]


def _candidate(b: Beam, step: StepInput, unfinished: str) -> Candidate:
    return Candidate(
        text=b.text,
        token_ids=b.token_ids,
        finish_reason=b.finish or unfinished,
        answer=extract_answer(b.text, step.answer_kind),
        score=b.score,
        mean_logprob=b.mean_logprob,
        token_logprobs=b.logprobs,
    )


async def beam(
    run: StrategyRun, *, delimiter: str = DELIMITER, max_rounds: int = MAX_ROUNDS, **_: Any
) -> StrategyResult:
    # many interleaved beams do not stream: run.on_token is not used
    step, config, scorer = run.step, run.config, run.scorer
    if step.guided is not None:
        raise TidalConfigError(
            "strategy 'beam' cannot keep a grammar across steps (guided decoding restarts "
            "at every continuation); use single or best_of_n for guided steps."
        )
    if not delimiter:
        raise TidalConfigError("delimiter is empty; pass the string that ends a step.")
    if not isinstance(max_rounds, int) or max_rounds < 1:
        raise TidalConfigError(f"max_rounds={max_rounds!r}: allowed is an integer >= 1.")
    tok, prompt_ids = tokenized_prompt(run, "beam")
    special = set(tok.all_special_ids)
    width, meter = config.n, CostMeter()
    live: list[Beam] = [Beam("", (), ())]
    completed: list[Beam] = []
    cut_off: list[Beam] = []
    rounds = pruned = pruned_tokens = 0
    deadline_hit = False

    while live and rounds < max_rounds and len(completed) < width:
        if past(run.deadline):
            deadline_hit = True
            break
        rounds += 1
        n_each = width * config.expansions if rounds == 1 else config.expansions
        requests = [
            request_for(
                run,
                n=n_each,
                prompt=prompt_ids + b.token_ids,
                max_tokens=config.max_tokens - len(b.token_ids),
                stop=(delimiter, *step.stop),
            )
            for b in live
        ]
        results = await meter.generate_all(run.engine, requests)
        children = [
            _extend(parent, s, step, delimiter, tok, special, config.max_tokens)
            for parent, result in zip(live, results, strict=True)
            for s in result.samples
        ]
        children = await _score(children, step, scorer)
        completed += [c for c in children if c.finish in ("stop", "length")]
        cut_off += [c for c in children if c.finish in ("timeout", "abort")]
        growing = sorted((c for c in children if c.finish is None), key=lambda c: -c.score)
        keep = max(width - len(completed), 0)
        live, dropped = growing[:keep], growing[keep:]
        pruned += len(dropped)
        pruned_tokens += sum(c.step_tokens for c in dropped)
        if any(r.timed_out for r in results):
            deadline_hit = True
            break

    finals = sorted(completed, key=lambda c: -c.score)
    partial = sorted(live + cut_off, key=lambda c: -c.score)
    best = finals[0] if finals else partial[0] if partial else Beam("", (), (), "timeout")
    unfinished = "timeout" if deadline_hit else "length"  # live beams stopped by rounds
    stop = (
        "deadline" if deadline_hit
        else "width_completed" if len(finals) >= width
        else "max_rounds" if rounds >= max_rounds
        else "no_live_beams"
    )  # fmt: skip
    candidates = tuple(_candidate(b, step, unfinished) for b in finals + partial)
    return StrategyResult(
        selected=_candidate(best, step, unfinished),
        candidates=candidates,
        cost=meter.record(cut_short=deadline_hit or not finals),
        config=config,
        details={
            "rounds": rounds,
            "completed": len(finals),
            "pruned_beams": pruned,
            "pruned_tokens": pruned_tokens,
            "selected_tokens": len(best.token_ids),
            "scored_by": type(scorer).__name__ if scorer else "mean_logprob",
            "stop": stop,
        },
    )
