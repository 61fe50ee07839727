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
ProbeConfidenceMethod = Literal["mean", "min", "parses"]
PROBE_CONFIDENCE_METHODS: tuple[str, ...] = ("mean", "min", "parses")
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


def probe_confidence(mean_logprob: float | None, answer: str | None) -> float:
    """A cascade probe's confidence: exp(mean token log-prob) in (0, 1].

    0.0 when no answer could be extracted from the probe (`answer` None) or it
    has no usable log-probs. The cascade strategy and its offline evaluation
    (`tidal_agents.evaluation.cascade`) both use this function.
    """
    if answer is None or mean_logprob is None or not math.isfinite(mean_logprob):
        return 0.0
    return min(math.exp(mean_logprob), 1.0)


def greedy_probe_confidence(
    token_logprobs: Sequence[float | None], answer: str | None,
    method: ProbeConfidenceMethod = "mean",
) -> float:
    """A greedy probe's confidence from its sampled tokens' log-probs, in [0, 1].

    ``mean``: exp(mean token log-prob); ``min``: exp(lowest token log-prob);
    ``parses``: 1 when an answer was extracted. 0.0 when no answer could be
    extracted (`answer` None) or, for mean/min, no finite log-prob is left. The
    greedy-probe cascade strategy and its offline evaluation
    (`tidal_agents.evaluation.cascade`) both use this function.
    """
    if method not in PROBE_CONFIDENCE_METHODS:
        raise TidalConfigError(
            f"probe confidence method={method!r}: allowed are "
            f"{', '.join(PROBE_CONFIDENCE_METHODS)}."
        )
    if answer is None:
        return 0.0
    if method == "parses":
        return 1.0
    lps = [float(x) for x in token_logprobs if x is not None and math.isfinite(x)]
    if not lps:
        return 0.0
    value = sum(lps) / len(lps) if method == "mean" else min(lps)
    return min(math.exp(value), 1.0)
