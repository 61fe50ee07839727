"""An episode's trace: typed step records plus exporters (DataFrame, JSONL,
console table, timeline plot). Callback handlers receive every record as the
custom event ``tidal_step``."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

from tidal_agents.trace.records import Spent, StepRecord

if TYPE_CHECKING:
    import pandas as pd


class Trace:
    """The step records of one episode, in order. Thread-safe appends."""

    def __init__(self, records: Iterable[StepRecord] = ()) -> None:
        self._records: list[StepRecord] = list(records)
        self.deadline_s: float | None = None
        self.started_at: float | None = None

    def append(self, record: StepRecord) -> None:
        self._records.append(record)  # list.append is atomic under the GIL

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[StepRecord]:
        return iter(list(self._records))

    @overload
    def __getitem__(self, i: int) -> StepRecord: ...
    @overload
    def __getitem__(self, i: slice) -> list[StepRecord]: ...
    def __getitem__(self, i: int | slice) -> StepRecord | list[StepRecord]:
        return self._records[i]

    # ------------------------------------------------------------ exporters
    def to_dataframe(self) -> pd.DataFrame:
        """One row per step; nested spent/decision fields flattened."""
        import pandas as pd

        rows = []
        for r in self._records:
            row = r.model_dump(exclude={"decision", "selection", "features", "spent"})
            spent = r.spent or Spent()
            row.update({f"spent_{k}": v for k, v in spent.model_dump().items()})
            row["reason"] = r.decision.get("reason")
            row["predictor_kind"] = r.decision.get("predictor_kind")
            row["latency_error"] = r.latency_error
            rows.append(row)
        return pd.DataFrame(rows)

    def to_jsonl(self, path: str | Path) -> Path:
        path = Path(path)
        with path.open("w", encoding="utf-8") as f:
            for r in self._records:
                f.write(r.model_dump_json() + "\n")
        return path

    @classmethod
    def from_jsonl(cls, path: str | Path) -> Trace:
        with Path(path).open(encoding="utf-8") as f:
            return cls(StepRecord.model_validate_json(line) for line in f if line.strip())

    def table(self) -> Any:
        """A rich Table: strategy, budget, allowance, predicted vs actual."""
        from rich.table import Table

        table = Table(title="tidal_agents episode trace")
        for col in ("step", "node", "strategy", "N", "allowance s", "pred s", "actual s",
                    "pred tok", "actual tok", "cut short", "why"):
            table.add_column(col, overflow="fold")
        for r in self._records:
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
                str(spent.prompt_tokens + spent.generated_tokens) if spent else "-",
                "yes" if r.cut_short else "",
                (r.error or r.decision.get("reason") or "")[:90],
            )
        return table

    def print(self) -> None:
        from rich.console import Console

        Console().print(self.table())

    def plot(self, path: str | Path) -> Path:
        """A timeline PNG: one bar per step (predicted vs actual), the deadline."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        path = Path(path)
        recs = self._records
        fig, ax = plt.subplots(figsize=(9, 1.2 + 0.5 * max(1, len(recs))))
        t0 = self.started_at if self.started_at is not None else (
            recs[0].started_at if recs else 0.0)
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
        if self.deadline_s is not None:
            ax.axvline(self.deadline_s, color="red", lw=2, label="deadline")
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles, strict=False))
        ax.legend(unique.values(), unique.keys(), loc="lower right", fontsize=8)
        ax.set_yticks(range(len(recs)), [f"step {r.step_index}" for r in recs])
        ax.invert_yaxis()
        ax.set_xlabel("seconds since episode start (dashed: predicted end, red tick: allowance)")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path


class JsonlWriter:
    """Appends one JSON line per record and flushes it to disk at once, so a
    crash loses nothing already written."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: StepRecord) -> None:
        line = record.model_dump_json() + "\n"
        with self.path.open("a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())


def _fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def load_jsonl(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


__all__ = ["JsonlWriter", "Spent", "StepRecord", "Trace", "load_jsonl"]
