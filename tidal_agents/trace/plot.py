"""The episode timeline as a PNG (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tidal_agents.trace.records import StepRecord


def plot_timeline(
    records: Sequence[StepRecord],
    path: str | Path,
    started_at: float | None = None,
    deadline_s: float | None = None,
) -> Path:
    """One bar per step from its start to its end, coloured by strategy; a dashed
    tick at the predicted end, a red tick at the allowance, the deadline as a line.

    `started_at` (wall clock) is the origin, default the first step's start;
    `deadline_s` counts from that origin.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recs = list(records)
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.5 * max(1, len(recs))))
    t0 = started_at if started_at is not None else (recs[0].started_at if recs else 0.0)
    colours: dict[str, Any] = {}
    cmap = plt.get_cmap("tab10")
    for i, r in enumerate(recs):
        colour = colours.setdefault(r.strategy, cmap(len(colours) % 10))
        start, dur = r.started_at - t0, max(r.ended_at - r.started_at, 1e-3)
        ax.barh(i, dur, left=start, color=colour, label=r.strategy, height=0.6)
        if r.predicted_latency_s is not None:
            ax.plot([start + r.predicted_latency_s] * 2, [i - 0.35, i + 0.35], "k--", lw=1)
        if r.allowance_s is not None:
            ax.plot(start + r.allowance_s, i, marker="|", color="red", ms=14)
        if r.cut_short or r.error:
            ax.text(start + dur, i, " cut" if r.cut_short else " error", va="center")
    if deadline_s is not None:
        ax.axvline(deadline_s, color="red", lw=2, label="deadline")
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        unique = dict(zip(labels, handles, strict=False))
        ax.legend(unique.values(), unique.keys(), loc="lower right", fontsize=8)
    ax.set_yticks(range(len(recs)), [f"step {r.step_index}" for r in recs])
    ax.invert_yaxis()
    ax.set_xlabel("seconds since episode start (dashed: predicted end, red tick: allowance)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
