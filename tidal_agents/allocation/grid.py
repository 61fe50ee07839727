"""The allocation grid: the decoding configurations the controller chooses among."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from tidal_agents.errors import TidalConfigError
from tidal_agents.types import StrategyConfig


def default_grid(
    max_tokens: int = 256,
    *,
    sample_ns: Sequence[int] = (2, 4, 8, 16),
    confidence_ns: Sequence[int] = (8,),
    beam_widths: Sequence[int] = (2, 4),
    temperature: float = 0.7,
    beam_expansions: int = 2,
) -> tuple[StrategyConfig, ...]:
    """Greedy, best-of-N with majority vote (and confidence for some N), step beam search.

    The default (8 configurations) mirrors the paper's grid shrunk to what a
    2-core CPU can afford: greedy; best_of_n N in 2, 4, 8, 16 with majority;
    N=8 with confidence-weighted voting; beam widths 2 and 4.
    """
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise TidalConfigError(f"max_tokens={max_tokens!r}: allowed is an integer >= 1.")
    for label, ns in (("sample_ns", sample_ns), ("confidence_ns", confidence_ns),
                      ("beam_widths", beam_widths)):
        bad = [n for n in ns if not isinstance(n, int) or isinstance(n, bool) or n < 2]
        if bad:
            raise TidalConfigError(f"{label} contains {bad}: allowed are integers >= 2.")
    grid = [StrategyConfig(strategy="single", n=1, temperature=0.0, max_tokens=max_tokens)]
    for n in sample_ns:
        grid.append(
            StrategyConfig(strategy="best_of_n", n=n, selector="majority",
                           max_tokens=max_tokens, temperature=temperature)
        )
        if n in confidence_ns:
            grid.append(
                StrategyConfig(strategy="best_of_n", n=n, selector="confidence",
                               max_tokens=max_tokens, temperature=temperature)
            )
    for n in confidence_ns:
        if n not in sample_ns:
            grid.append(
                StrategyConfig(strategy="best_of_n", n=n, selector="confidence",
                               max_tokens=max_tokens, temperature=temperature)
            )
    for w in beam_widths:
        grid.append(
            StrategyConfig(strategy="beam", n=w, max_tokens=max_tokens,
                           temperature=temperature, expansions=beam_expansions)
        )
    return check_grid(grid)


def check_grid(grid: Iterable[StrategyConfig]) -> tuple[StrategyConfig, ...]:
    """Validate a user grid: non-empty, StrategyConfigs only, unique names."""
    configs = tuple(grid)
    if not configs:
        raise TidalConfigError("The allocation grid is empty; pass at least one StrategyConfig.")
    wrong = [type(c).__name__ for c in configs if not isinstance(c, StrategyConfig)]
    if wrong:
        raise TidalConfigError(f"The grid must hold StrategyConfig objects, got {wrong}.")
    names = [c.name for c in configs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        # names key the cost model's corrections and the trace: they must be unique
        raise TidalConfigError(f"Grid configuration names must be unique; repeated: {dupes}.")
    return configs
