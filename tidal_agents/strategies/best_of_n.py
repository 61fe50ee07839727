"""Best-of-N: N samples in one engine request (they share the prompt's KV cache), then a selector.

Adaptive mode (self-consistency that stops early, after Aggarwal et al. 2023,
"Let's Sample Step by Step: Adaptive-Consistency"): draw in waves so the total
doubles, 2, 4, 8, ... up to n, and stop after a wave when the vote is decided:

1. the leader cannot be overtaken: leader - runner_up > samples still to draw
   (then the full-n majority would pick the same answer); or
2. it is decisive: with a uniform prior on the leader's share p among the two
   top answers, P(p > 1/2 | a, b votes) = P(Binomial(a+b+1, 1/2) <= a) >= 0.95.
   4 agreeing votes of 4 give 0.97 (stop); 3 of 3 give 0.94; 5 vs 1 give 0.94.

Costs are summed over waves. Samples cut short by the deadline vote only when
no complete sample exists.
"""

from __future__ import annotations

import math
from typing import Any

from tidal_agents.errors import TidalConfigError
from tidal_agents.selection.answers import canonical_answer
from tidal_agents.selection.voting import select
from tidal_agents.strategies._common import CostMeter, past, request_for, to_candidate
from tidal_agents.strategies.base import StrategyRun
from tidal_agents.types import Candidate, StrategyResult

DECISIVE = 0.95
_VOTING = ("majority", "confidence", "tool_vote")


def leader_confidence(leader: int, runner_up: int) -> float:
    """P(leader's true share beats the runner-up's) under a uniform Beta prior."""
    m = leader + runner_up + 1
    return sum(math.comb(m, j) for j in range(leader + 1)) / 2**m


def vote_decided(counts: list[int], remaining: int) -> tuple[bool, str]:
    """Whether sampling can stop, and which rule said so."""
    ranked = sorted(counts, reverse=True) + [0, 0]
    a, b = ranked[0], ranked[1]
    if a == 0:
        return False, "no_votes"
    if a - b > remaining:
        return True, "unassailable"
    if leader_confidence(a, b) >= DECISIVE:
        return True, "decisive"
    return False, "undecided"


def wave_sizes(n: int) -> list[int]:
    """Sizes of successive waves whose running total is 2, 4, 8, ..., n."""
    sizes, total = [], 0
    while total < n:
        target = min(n, max(2, total * 2))
        sizes.append(target - total)
        total = target
    return sizes


async def best_of_n(run: StrategyRun, **_: Any) -> StrategyResult:
    # N interleaved samples do not stream: run.on_token is not used
    step, config = run.step, run.config
    if config.adaptive and config.selector not in _VOTING:
        raise TidalConfigError(
            f"adaptive best_of_n stops on vote agreement; selector={config.selector!r} does "
            f"not vote. Allowed with adaptive=True: {', '.join(_VOTING)}."
        )
    kind = "tool_call" if config.selector == "tool_vote" else step.answer_kind
    meter = CostMeter()
    candidates: list[Candidate] = []
    waves: list[int] = []
    stop_rule = "all_samples"
    sizes = wave_sizes(config.n) if config.adaptive else [config.n]

    for size in sizes:
        if waves and past(run.deadline):
            stop_rule = "deadline"
            break
        result = meter.add(await run.engine.generate(request_for(run, n=size)))
        candidates.extend(to_candidate(s, step) for s in result.samples)
        waves.append(size)
        if result.timed_out:
            stop_rule = "deadline"
            break
        if config.adaptive and len(candidates) < config.n:
            keys = [canonical_answer(c.text, kind) for c in candidates]
            counts = [keys.count(k) for k in set(keys) if k is not None]
            done, rule = vote_decided(counts, config.n - len(candidates))
            if done:
                stop_rule = rule
                break

    complete = [i for i, c in enumerate(candidates) if c.finish_reason in ("stop", "length")]
    pool = complete or list(range(len(candidates)))
    chosen = select(
        [candidates[i] for i in pool], config.selector, step.answer_kind, run.scorer, step.prompt
    )
    index = pool[chosen.index]
    return StrategyResult(
        selected=candidates[index],
        candidates=tuple(candidates),
        cost=meter.record(cut_short=stop_rule == "deadline"),
        config=config,
        details={
            "rule": chosen.rule,
            "tally": chosen.tally,
            "share": chosen.share,
            "selected_index": index,
            "weights": list(chosen.weights),
            "waves": waves,
            "samples": len(candidates),
            "stop": stop_rule,
        },
    )
