"""Execute: run the chosen strategy on the engine, with retries and a hang guard.

Engines abort a request at the step's deadline themselves; the hang guard is
the last resort for one that does not return anyway.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

from tidal_agents.engine.retry import retrying_until
from tidal_agents.engine.types import Engine, TokenCallback
from tidal_agents.errors import TidalEngineError
from tidal_agents.strategies import run_strategy
from tidal_agents.strategies.base import StepInput
from tidal_agents.types import Candidate, CostRecord, StrategyConfig, StrategyResult

#: how long past its allowance a step may hang before it is cancelled
HANG_GRACE_S = 2.0
#: an engine that produced output for any request this recently is busy, not hung
BUSY_WINDOW_S = 1.0


async def run_guarded(
    engine: Engine,
    step: StepInput,
    config: StrategyConfig,
    deadline: float | None,
    on_token: TokenCallback | None,
    hard_limit: float | None = None,
) -> StrategyResult:
    """The strategy, cancelled if it has not returned `HANG_GRACE_S` after `deadline`
    or at `hard_limit` (absolute ``time.monotonic()``; the episode's deadline + B),
    whichever comes first."""
    ends = [t for t in (
        None if deadline is None else deadline + HANG_GRACE_S, hard_limit
    ) if t is not None]
    limit = max(min(ends) - time.monotonic(), 0) if ends else None
    started = time.monotonic()
    try:
        async with asyncio.timeout(limit):
            return await run_strategy(engine, step, config, deadline, on_token)
    except TimeoutError as exc:
        if engine.seconds_since_output <= BUSY_WINDOW_S:
            # busy, not hung: its own timeout fired late (its loop is loaded); the step
            # merely ran out of time, like any other step cut short
            return nothing_in_time(config, time.monotonic() - started)
        raise TidalEngineError(
            f"The engine did not return within the step's allowance + {HANG_GRACE_S:g} s "
            "(or by the episode's deadline + its bound) and produced no output for "
            f"{BUSY_WINDOW_S:g} s; the request was cancelled."
        ) from exc


def nothing_in_time(config: StrategyConfig, wall_s: float) -> StrategyResult:
    """The result of a step cut off before its strategy returned: no output."""
    empty = Candidate(text="", token_ids=(), finish_reason="abort")
    return StrategyResult(
        selected=empty, candidates=(),
        cost=CostRecord(wall_s=wall_s, engine_calls=1, cut_short=True),
        config=config, details={"stop": "cut off: the engine did not return in time"},
    )


async def execute(
    engine: Engine,
    step: StepInput,
    config: StrategyConfig,
    deadline: float | None,
    on_token: TokenCallback | None,
    max_retries: int,
    hard_limit: float | None = None,
) -> StrategyResult:
    """`run_guarded`, retried on engine errors, never past `deadline`.

    The errors that were retried are kept in the result's details for the trace.
    """
    errors: list[str] = []
    retrying = retrying_until(
        deadline, retry_on=TidalEngineError, attempts=max_retries + 1,
        wait_multiplier=0.2, wait_max=2.0,
    )
    async for attempt in retrying:
        with attempt:
            try:
                result = await run_guarded(
                    engine, step, config, deadline, on_token, hard_limit
                )
            except TidalEngineError as exc:
                errors.append(str(exc))
                raise
            if errors:
                result = replace(result, details={**result.details, "engine_errors": errors})
            return result
    raise AssertionError("unreachable")  # pragma: no cover - tenacity re-raises
