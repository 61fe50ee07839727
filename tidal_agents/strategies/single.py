"""One sample: greedy at temperature 0, otherwise one draw at the configured temperature.

The baseline every other strategy is measured against, and the only one whose
tokens can stream to the caller as they are generated.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from tidal_agents.strategies._common import CostMeter, request_for, to_candidate
from tidal_agents.strategies.base import StrategyRun
from tidal_agents.types import StrategyResult


async def single(run: StrategyRun, **_: Any) -> StrategyResult:
    meter = CostMeter()
    request = request_for(run)
    if run.step.logprobs is not True:
        # One sample is never compared with another: its log-probs would be computed,
        # sent and collected for nothing (StepInput.logprobs=True still asks for them).
        request = replace(request, logprobs=None)
    # A past deadline still issues the request with a tiny timeout: vLLM aborts at
    # once and we return the (possibly empty) partial sample rather than raise.
    result = meter.add(await run.engine.generate(request, run.on_token))
    candidate = to_candidate(result.samples[0], run.step)
    return StrategyResult(
        selected=candidate,
        candidates=(candidate,),
        cost=meter.record(cut_short=result.timed_out),
        config=run.config,
        details={"greedy": run.config.temperature == 0},
    )
