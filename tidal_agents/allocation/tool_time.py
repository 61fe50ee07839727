"""Tool execution time, learned per tool name online.

Each tool name has an exponentially weighted mean of its measured seconds: the
first measurement replaces the prior, later ones move the mean by
``TOOL_TIME_RATE`` of the difference (like the cost model's rates). A tool
never measured is predicted at ``DEFAULT_TOOL_TIME_S`` (0.5 s: a local
function returns in milliseconds, a web or database call in about a second).

A measurement cut off by a timeout is censored: it is a lower bound on the
tool's time, so it may only raise the mean.

`TOOL_TIMES` is the process-wide table: an episode starts from what earlier
episodes measured and teaches it what it measures (see `Episode.tool_time_s`).
"""

from __future__ import annotations

import math
import threading

from tidal_agents.validation import check_number

#: seconds predicted for a tool never measured
DEFAULT_TOOL_TIME_S = 0.5
#: weight of the newest measurement in a tool's mean
TOOL_TIME_RATE = 0.3


class ToolTimes:
    """Seconds per tool name (exponentially weighted means); thread-safe.

    A name this table has not measured is looked up in `parent` (when given),
    then predicted at `prior_s`. The first update of a name starts from the
    parent's mean, so an episode's own table refines the process-wide one.
    """

    def __init__(self, parent: ToolTimes | None = None,
                 prior_s: float = DEFAULT_TOOL_TIME_S) -> None:
        check_number("prior_s", prior_s, lo=0)
        self.parent = parent
        self.prior_s = float(prior_s)
        self._means: dict[str, float] = {}
        self._lock = threading.Lock()

    def known(self, name: str) -> float | None:
        """The learned mean for `name` here or in the parent, None if never measured."""
        with self._lock:
            mean = self._means.get(name)
        if mean is None and self.parent is not None:
            return self.parent.known(name)
        return mean

    def seconds(self, name: str) -> float:
        """Predicted seconds for one call of `name` (the prior when never measured)."""
        mean = self.known(name)
        return self.prior_s if mean is None else mean

    def names(self) -> list[str]:
        """Tool names measured here (not in the parent)."""
        with self._lock:
            return list(self._means)

    def mean_over_known(self) -> float | None:
        """The mean of the learned means here, None when nothing was measured."""
        with self._lock:
            means = list(self._means.values())
        return sum(means) / len(means) if means else None

    def update(self, name: str, seconds: float, censored: bool = False) -> float:
        """Move `name`'s mean toward one measurement and return the new mean.
        Negative or non-finite measurements are ignored."""
        if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds >= 0):
            return self.seconds(name)
        with self._lock:
            old = self._means.get(name)
        if old is None and self.parent is not None:
            old = self.parent.known(name)
        if old is None:
            new = float(seconds)
        elif censored and seconds <= old:
            new = old
        else:
            new = old + TOOL_TIME_RATE * (float(seconds) - old)
            if censored:  # a lower bound: the mean must reach it
                new = max(new, float(seconds))
        with self._lock:
            self._means[name] = new
        return new

    def clear(self) -> None:
        with self._lock:
            self._means.clear()


#: the process-wide table every episode reads from and teaches
TOOL_TIMES = ToolTimes()
