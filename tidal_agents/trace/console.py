"""The trace as a rich console table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tidal_agents.trace.records import StepRecord

COLUMNS = ("step", "node", "strategy", "N", "allowance s", "pred s", "actual s",
           "pred tok", "actual tok", "cut short", "why")


def trace_table(records: Sequence[StepRecord], title: str = "tidal_agents episode trace") -> Any:
    """A rich Table: strategy, budget, allowance, predicted vs actual latency and tokens.

    Tokens are generated tokens on both sides (what the cost model predicts).
    """
    from rich.table import Table

    table = Table(title=title)
    for col in COLUMNS:
        table.add_column(col, overflow="fold")
    for r in records:
        spent = r.spent
        table.add_row(
            str(r.step_index),
            r.node or "-",
            r.strategy,
            str(r.n),
            _fmt(r.allowance_s),
            _fmt(r.predicted_latency_s),
            _fmt(spent.wall_s if spent else None),
            _fmt(r.predicted_tokens, 0),
            str(spent.generated_tokens) if spent else "-",
            "yes" if r.cut_short else "",
            (r.error or r.decision.get("reason") or "")[:90],
        )
    return table


def print_trace(records: Sequence[StepRecord], console: Any = None) -> None:
    from rich.console import Console

    (console or Console()).print(trace_table(records))


def _fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"
