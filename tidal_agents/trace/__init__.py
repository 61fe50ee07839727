"""An episode's trace: typed step records plus exporters (DataFrame, JSONL,
console table, timeline plot). Callback handlers receive every record as the
custom event ``tidal_step`` (`tidal_agents.trace.events`)."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

from tidal_agents.trace.jsonl import JsonlWriter, load_jsonl, read_jsonl, write_jsonl
from tidal_agents.trace.records import Spent, StepRecord, TraceEvent

if TYPE_CHECKING:
    import pandas as pd


class Trace:
    """The step records of one episode, in order. Thread-safe appends.

    `started_at` (wall clock) and `deadline_s` place the deadline on the plot;
    an Episode sets both.
    """

    def __init__(self, records: Iterable[StepRecord] = ()) -> None:
        self._records: list[StepRecord] = list(records)
        #: tool errors, refused steps: what happened between model steps
        self.events: list[TraceEvent] = []
        self._lock = threading.Lock()
        self.deadline_s: float | None = None
        self.started_at: float | None = None

    def append(self, record: StepRecord) -> None:
        if not isinstance(record, StepRecord):
            raise TypeError(f"Trace holds StepRecord objects, got {type(record).__name__}.")
        with self._lock:
            self._records.append(record)

    @property
    def records(self) -> list[StepRecord]:
        """A snapshot list of the records."""
        with self._lock:
            return list(self._records)

    @property
    def tokens_used(self) -> int:
        """Generated tokens of all steps (what ``max_episode_tokens`` limits)."""
        return sum(r.spent.generated_tokens for r in self.records if r.spent is not None)

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[StepRecord]:
        return iter(self.records)

    @overload
    def __getitem__(self, i: int) -> StepRecord: ...
    @overload
    def __getitem__(self, i: slice) -> list[StepRecord]: ...
    def __getitem__(self, i: int | slice) -> StepRecord | list[StepRecord]:
        return self._records[i]

    def __repr__(self) -> str:
        return f"Trace({len(self)} steps)"

    # ------------------------------------------------------------ exporters
    def to_dataframe(self) -> pd.DataFrame:
        """One row per step; nested spent/decision fields flattened.

        Columns: the record's scalar fields (episode_id, step_index, node,
        langgraph_step, started_at, ended_at, time_left_before_s,
        time_left_after_s, allowance_s, strategy, n, predicted_latency_s,
        predicted_tokens, predicted_accuracy, cut_short, finish, error),
        spent_* (prompt/cached/generated tokens, engine_calls, wall_s),
        reason, predictor_kind, latency_error, tokens_error.
        """
        import pandas as pd

        rows = []
        for r in self.records:
            row = r.model_dump(exclude={"decision", "selection", "features", "spent"})
            spent = r.spent or Spent()
            row.update({f"spent_{k}": v for k, v in spent.model_dump().items()})
            row["reason"] = r.decision.get("reason")
            row["predictor_kind"] = r.decision.get("predictor_kind")
            row["latency_error"] = r.latency_error
            row["tokens_error"] = r.tokens_error
            rows.append(row)
        return pd.DataFrame(rows)

    def to_jsonl(self, path: str | Path) -> Path:
        return write_jsonl(self.records, path)

    @classmethod
    def from_jsonl(cls, path: str | Path) -> Trace:
        """Read a trace file; the deadline is recovered from the first step's clock."""
        trace = cls(read_jsonl(path))
        if trace._records:
            first = trace._records[0]
            trace.started_at = first.started_at
            if first.time_left_before_s is not None:
                trace.deadline_s = first.time_left_before_s
        return trace

    def table(self) -> Any:
        """A rich Table: strategy, budget, allowance, predicted vs actual."""
        from tidal_agents.trace.console import trace_table

        return trace_table(self.records)

    def print(self, console: Any = None) -> None:
        from tidal_agents.trace.console import print_trace

        print_trace(self.records, console)

    def plot(self, path: str | Path) -> Path:
        """A timeline PNG: one bar per step (predicted vs actual), the deadline."""
        from tidal_agents.trace.plot import plot_timeline

        return plot_timeline(self.records, path, self.started_at, self.deadline_s)


__all__ = [
    "JsonlWriter",
    "Spent",
    "StepRecord",
    "Trace",
    "TraceEvent",
    "load_jsonl",
    "read_jsonl",
    "write_jsonl",
]
