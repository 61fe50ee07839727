"""How confident a sample is, from its own token log-probs.

Default weight: DeepConf's "lowest group confidence" (Fu et al. 2025), computed
on the sampled tokens' log-probs: slide a window of `window` tokens over the
sample, take the window with the lowest mean log-prob, and return exp(that
mean), a probability-like number in (0, 1]. A sample is only as trustworthy as
its least confident stretch; one confused stretch in an otherwise fluent trace
is what separates wrong reasoning from right in their measurements. Samples
shorter than the window use their whole mean, which is CISC's length-normalised
sequence probability exp(mean log-prob) (Taubenfeld et al. 2025), also
available as ``method="mean"``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from tidal_agents.errors import TidalConfigError

ConfidenceMethod = Literal["lowest_window", "mean"]
DEFAULT_WINDOW = 16


def confidence(
    token_logprobs: Sequence[float],
    method: ConfidenceMethod = "lowest_window",
    window: int = DEFAULT_WINDOW,
) -> float | None:
    """exp(lowest windowed mean log-prob) or exp(mean log-prob); None without log-probs."""
    if method not in ("lowest_window", "mean"):
        raise TidalConfigError(f"confidence method={method!r}: allowed are lowest_window, mean.")
    if not isinstance(window, int) or window < 1:
        raise TidalConfigError(f"window={window!r}: allowed is an integer >= 1.")
    # vLLM reports NaN when a sampled token's log-prob is missing; such tokens say nothing.
    lps = [float(x) for x in token_logprobs if not math.isnan(x)]
    if not lps:
        return None
    if method == "mean" or len(lps) <= window:
        return math.exp(sum(lps) / len(lps))
    running = sum(lps[:window])
    lowest = running
    for i in range(window, len(lps)):
        running += lps[i] - lps[i - window]
        lowest = min(lowest, running)
    return math.exp(lowest / window)
