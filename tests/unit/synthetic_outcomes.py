"""Synthetic outcome rows shared by the evaluation unit tests (no engine)."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import numpy as np


def synthetic_rows(queries: int = 120, seed: int = 0) -> list[dict]:
    """Outcome rows whose accuracy falls with digits and rises with N (majority)."""
    rng = random.Random(seed)
    rows = []
    for q in range(queries):
        digits = 1 + q % 3
        a, b = rng.randint(10 ** (digits - 1), 10**digits - 1), rng.randint(1, 9)
        p1 = {1: 0.7, 2: 0.35, 3: 0.02}[digits]
        for name, strategy, n, sel, temp in [
            ("greedy", "single", 1, "first", 0.0),
            ("bo4-majority", "best_of_n", 4, "majority", 0.7),
            ("bo16-majority", "best_of_n", 16, "majority", 0.7),
        ]:
            p = p1 if n == 1 else min(1.0, p1 * (1 + 0.15 * np.log2(n)))
            label = float(np.clip(p + rng.gauss(0, 0.05), 0, 1))
            rows.append({
                "query_id": f"q{q}", "question": f"What is {a} + {b}?", "prompt_tokens": 40,
                "config": name, "strategy": strategy, "n": n, "selector": sel,
                "temperature": temp, "max_tokens": 64, "soft_label": label,
                "tokens": 40 + 20 * n, "latency_s": 0.5 + 0.1 * n,
            })
    return rows


def write_synthetic_outcomes(path: Path, queries: int) -> Path:
    """`synthetic_rows(queries)` as a gzipped JSONL outcome file at `path`."""
    with gzip.open(path, "wt") as fh:
        for r in synthetic_rows(queries):
            fh.write(json.dumps(r) + "\n")
    return path
