"""Decoding strategies: one sample, best-of-N, step-level beam, vLLM's token beam.

``run_strategy`` is the one entry point: it looks the strategy up in
``STRATEGIES`` and passes the step, budget and deadline through.
"""

from __future__ import annotations

from typing import Any

from tidal_agents.engine.types import Engine, TokenCallback
from tidal_agents.errors import TidalConfigError
from tidal_agents.selection.scorers import Scorer
from tidal_agents.strategies.base import StepInput, Strategy, StrategyRun
from tidal_agents.strategies.beam import beam
from tidal_agents.strategies.best_of_n import best_of_n
from tidal_agents.strategies.single import single
from tidal_agents.strategies.vllm_beam import vllm_beam
from tidal_agents.types import Candidate, CostRecord, StrategyConfig, StrategyName, StrategyResult

STRATEGIES: dict[StrategyName, Strategy] = {
    "single": single,
    "best_of_n": best_of_n,
    "beam": beam,
    "vllm_beam": vllm_beam,
}


async def run_strategy(
    engine: Engine,
    step: StepInput,
    config: StrategyConfig,
    deadline: float | None = None,
    on_token: TokenCallback | None = None,
    *,
    scorer: Scorer | None = None,
    **options: Any,
) -> StrategyResult:
    """Run `config.strategy` on `engine`.

    `deadline` is an absolute ``time.monotonic()`` value: the strategy stops
    there and returns its best candidate so far with ``cost.cut_short=True``
    (it never raises for a past deadline). `scorer` serves selector="scorer"
    and beam pruning; `options` reach the strategy (e.g. beam's `delimiter`).
    """
    fn = STRATEGIES.get(config.strategy)
    if fn is None:
        raise TidalConfigError(
            f"strategy={config.strategy!r}: allowed are {', '.join(STRATEGIES)}."
        )
    if not isinstance(step, StepInput):
        raise TidalConfigError(f"step must be a StepInput, got {type(step).__name__}.")
    if config.selector == "scorer" and scorer is None and config.strategy == "best_of_n":
        raise TidalConfigError("selector='scorer' needs scorer=...; none was given.")
    run = StrategyRun(engine, step, config, deadline, on_token, scorer)
    return await fn(run, **options)


__all__ = [
    "STRATEGIES",
    "Candidate",
    "CostRecord",
    "StepInput",
    "Strategy",
    "StrategyRun",
    "StrategyConfig",
    "StrategyResult",
    "run_strategy",
]
