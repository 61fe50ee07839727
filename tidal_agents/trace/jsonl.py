"""JSON Lines persistence of step records: one line per step, flushed as written."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tidal_agents.errors import TidalConfigError
from tidal_agents.trace.records import StepRecord, TraceEvent

logger = logging.getLogger(__name__)


class JsonlWriter:
    """Appends one JSON line per record and flushes it to disk at once, so a
    crash loses nothing already written (the file is reopened per record: no
    handle outlives a step, and other readers see every finished line)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def write(self, record: StepRecord | TraceEvent) -> None:
        line = record.model_dump_json() + "\n"
        with self._lock, self.path.open("a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())


def write_jsonl(records: Iterable[StepRecord], path: str | Path) -> Path:
    """Write `records` to `path` (replacing it), one JSON object per line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(r.model_dump_json() + "\n")
    return path


def read_jsonl(path: str | Path) -> list[StepRecord]:
    """Step records of a trace file (event lines, ``{"event": ...}``, are skipped).

    A cut-off last line (the process died mid-write) is skipped with a warning;
    a bad line anywhere else is an error naming its line number.
    """
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    numbered = [(i + 1, line) for i, line in enumerate(lines) if line.strip()]
    records = []
    for k, (lineno, line) in enumerate(numbered):
        try:
            if line.startswith('{"event":'):
                TraceEvent.model_validate_json(line)
                continue
            records.append(StepRecord.model_validate_json(line))
        except ValidationError as exc:
            if k == len(numbered) - 1 and not line.rstrip().endswith("}"):
                logger.warning("%s: skipping cut-off last line %d", path, lineno)
                break
            raise TidalConfigError(f"{path}:{lineno} is not a step record: {exc}") from exc
    return records


def load_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The trace file's lines as plain dicts (no validation)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
