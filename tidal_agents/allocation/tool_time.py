"""Tool execution time, learned per tool name online.

Each tool name has an exponentially weighted mean of its measured seconds: the
first measurement replaces the prior, later ones move the mean by
``TOOL_TIME_RATE`` of the difference (like the cost model's rates). A tool
never measured is predicted at ``DEFAULT_TOOL_TIME_S`` (0.5 s: a local
function returns in milliseconds, a web or database call in about a second).

A measurement cut off by a timeout is censored: it is a lower bound on the
tool's time, so it may only raise the mean.

Beside the mean each name keeps an exponentially weighted mean absolute
deviation, so a time reserve can cover a slow call and not only a typical one:
`upper_seconds` is the mean plus ``UPPER_DEVIATIONS`` deviations. Until a name
has two measurements its deviation is taken as half its mean (a tool that took
0.8 s once may well take 1.2 s next time).

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
#: deviations above the mean that `ToolTimes.upper_seconds` reserves; for a
#: tool time spread evenly this covers nearly every call
UPPER_DEVIATIONS = 2.0
#: a name's deviation, as a share of its mean, before a second measurement
FIRST_DEVIATION_SHARE = 0.5


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
        self._deviations: dict[str, float] = {}
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

    def known_deviation(self, name: str) -> float | None:
        """The learned mean absolute deviation for `name` here or in the parent, None
        if fewer than two measurements (or none) were taken."""
        with self._lock:
            deviation = self._deviations.get(name)
        if deviation is None and self.parent is not None and self.known_here(name) is None:
            return self.parent.known_deviation(name)
        return deviation

    def known_here(self, name: str) -> float | None:
        with self._lock:
            return self._means.get(name)

    def upper_seconds(self, name: str) -> float:
        """Seconds that cover a slow call of `name`: its mean plus `UPPER_DEVIATIONS`
        deviations (half the mean per deviation until it was measured twice)."""
        mean = self.seconds(name)
        deviation = self.known_deviation(name)
        if deviation is None:
            deviation = FIRST_DEVIATION_SHARE * mean
        return mean + UPPER_DEVIATIONS * deviation

    def names(self) -> list[str]:
        """Tool names measured here (not in the parent)."""
        with self._lock:
            return list(self._means)

    def mean_over_known(self) -> float | None:
        """The mean of the learned means here, None when nothing was measured."""
        with self._lock:
            means = list(self._means.values())
        return sum(means) / len(means) if means else None

    def upper_over_known(self) -> float | None:
        """The mean of `upper_seconds` over the names measured here, None when none."""
        names = self.names()
        return sum(map(self.upper_seconds, names)) / len(names) if names else None

    def update(self, name: str, seconds: float, censored: bool = False) -> float:
        """Move `name`'s mean toward one measurement and return the new mean.
        Negative or non-finite measurements are ignored."""
        if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds >= 0):
            return self.seconds(name)
        with self._lock:
            old = self._means.get(name)
            deviation = self._deviations.get(name)
        if old is None and self.parent is not None:
            old = self.parent.known(name)
            deviation = self.parent.known_deviation(name)
        if old is None:
            new = float(seconds)
        elif censored and seconds <= old:
            new = old
        else:
            new = old + TOOL_TIME_RATE * (float(seconds) - old)
            if censored:  # a lower bound: the mean must reach it
                new = max(new, float(seconds))
            elif deviation is None:
                deviation = abs(float(seconds) - old)
            else:
                deviation += TOOL_TIME_RATE * (abs(float(seconds) - old) - deviation)
        with self._lock:
            self._means[name] = new
            if deviation is not None:
                self._deviations[name] = deviation
        return new

    def clear(self) -> None:
        with self._lock:
            self._means.clear()
            self._deviations.clear()


#: the process-wide table every episode reads from and teaches
TOOL_TIMES = ToolTimes()
