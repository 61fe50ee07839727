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
            r.error or _short_reason(r),
        )
    return table


def _short_reason(r: StepRecord) -> str:
    """The gist of the decision; the full reason stays in the record."""
    reason = str(r.decision.get("reason") or "")
    cands = r.decision.get("candidates") or []
    fitting = sum(1 for c in cands if c.get("fits"))
    if reason.startswith("deadline passed"):
        return "deadline passed: fastest config"
    if not r.decision.get("any_fits", True):
        return f"none of {len(cands)} fit: fastest"
    acc = r.predicted_accuracy
    acc_text = f", pred acc {acc:.2f}" if acc is not None else ""
    return f"max utility, {fitting}/{len(cands)} fit{acc_text}"


def print_trace(records: Sequence[StepRecord], console: Any = None) -> None:
    from rich.console import Console

    # Wide enough for the table when output is not a terminal (logs, CI).
    (console or Console(width=None if _is_tty() else 140)).print(trace_table(records))


def _is_tty() -> bool:
    import sys

    return sys.stdout.isatty()


def _fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"
