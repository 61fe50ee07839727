"""The statistics the benches report: interleaving order, median and spread, and a
seeded bootstrap interval of a median paired difference."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")
#: seed of every bootstrap, so that a results file can be reproduced from its timings
BOOTSTRAP_SEED = 0
BOOTSTRAP_RESAMPLES = 2000


def rotated(sides: Sequence[T], i: int) -> list[T]:
    """`sides` rotated by `i`: repeat i starts with a different side each time, so that
    a drift in load hits every side alike."""
    k = i % len(sides) if sides else 0
    return [*sides[k:], *sides[:k]]


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, quartiles, extremes and count of `values`."""
    if not values:
        raise ValueError("spread of no values")
    p25, p50, p75 = np.percentile(np.asarray(values, dtype=float), [25, 50, 75])
    return {"median": float(p50), "p25": float(p25), "p75": float(p75),
            "min": float(min(values)), "max": float(max(values)), "n": len(values)}


def bootstrap_median_interval(
    values: Sequence[float], *, seed: int = BOOTSTRAP_SEED,
    resamples: int = BOOTSTRAP_RESAMPLES, level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the median of `values` (seeded, reproducible)."""
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        raise ValueError("bootstrap of no values")
    rng = np.random.default_rng(seed)
    medians = np.median(data[rng.integers(0, data.size, size=(resamples, data.size))], axis=1)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(medians, [tail, 100 - tail])
    return float(lo), float(hi)


def paired_overhead(
    wrapped_s: Sequence[float], bare_s: Sequence[float], *, seed: int = BOOTSTRAP_SEED
) -> dict[str, Any]:
    """Wrapper vs bare call times of interleaved pairs: the median difference in ms with
    its 95% bootstrap interval and spread, the median per-pair ratio, the ratios of sums
    and of minima, and both sides' medians."""
    if len(wrapped_s) != len(bare_s) or not wrapped_s:
        raise ValueError("paired_overhead needs two equally long, non-empty series")
    pairs = list(zip(wrapped_s, bare_s, strict=True))
    diffs_ms = [1000 * (w - b) for w, b in pairs]
    lo, hi = bootstrap_median_interval(diffs_ms, seed=seed)
    return {
        "overhead_ms": statistics.median(diffs_ms),
        "overhead_ms_ci95": [lo, hi],
        "overhead_ms_spread": spread(diffs_ms),
        "overhead_ratio": statistics.median(w / b for w, b in pairs),
        "ratio_of_sums": sum(wrapped_s) / sum(bare_s),
        "ratio_of_minima": min(wrapped_s) / min(bare_s),
        "wrapped_wall_s": statistics.median(wrapped_s),
        "bare_wall_s": statistics.median(bare_s),
        "pairs": len(diffs_ms),
    }
