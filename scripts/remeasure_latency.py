"""Re-measure the committed outcome set's latencies on a quiet machine.

The collection's latency model was fitted while other engines ran (greedy
requests of ~0.5 s took 9-38 s), so every row's `latency_s` was on the wrong
scale. This script, run with nothing else on the machine:

1. measures the latency model again (`collect.measure_latency`: 3 steps of each
   kind alone at n = 1, 2, 4, 8, 16 and greedy) and writes it to
   `tidal_agents/data/latency-steps.jsonl.gz`;
2. replays every greedy and best-of-N row from the committed samples with the
   same bootstrap (`collect.rows_from_samples`, the step's own seeded rng) and
   replaces its `latency_s`; labels and tokens stay as collected (the replay
   lacks per-token log-probs, so its confidence votes are not used);
3. runs the beam rows of the text steps again, alone, for their wall times
   (beam search is deterministic; labels are kept as collected and any that differ
   are counted).

    .venv/bin/python scripts/remeasure_latency.py
"""

from __future__ import annotations

import asyncio
import gzip
import json
import random
import sys
from dataclasses import asdict
from typing import Any

from tidal_agents.engine import EngineConfig, get_engine
from tidal_agents.evaluation import collect
from tidal_agents.evaluation.train import data_dir
from tidal_agents.selection.answers import extract_answer
from tidal_agents.types import Candidate

STEPS = ["arith:60", "gsm8k:12", "agent:60"]
SETTINGS = collect.CollectSettings(n_max=16, max_tokens=64, seed=0, latency_items=3)


def _candidate(record: dict[str, Any], answer_kind: str) -> Candidate:
    return Candidate(text=record["text"], token_ids=(0,) * int(record["tokens"]),
                     finish_reason=record["finish"],
                     answer=extract_answer(record["text"], answer_kind),  # type: ignore[arg-type]
                     mean_logprob=record["mean_logprob"])


async def remeasure() -> dict[str, Any]:
    data = data_dir()
    rows = collect.read_rows(data / "outcomes-steps.jsonl.gz")
    samples = {r["query_id"]: r for r in collect.read_rows(data / "samples-steps.jsonl.gz")}
    steps = collect.load_steps(STEPS, seed=SETTINGS.seed)
    engine = get_engine(EngineConfig())
    measurements = await collect.measure_latency(engine, steps, SETTINGS)
    latency = collect.LatencyModel.fit(measurements)
    new_latency: dict[tuple[str, str], float] = {}
    token_mismatch = beam_label_changed = 0
    stored = {(r["query_id"], r["config"]): r for r in rows}
    for task in steps:
        prepared = collect.prepare(engine, task, SETTINGS)
        kind = prepared.step_input().answer_kind
        rec = samples[task.id]
        follow = collect.FollowUps(
            _candidate(rec["greedy"], kind),
            _candidate(rec["guard"], kind) if rec["guard"] else None)
        got = collect.StepSamples(task, prepared,
                                  tuple(_candidate(s, kind) for s in rec["samples"]), follow)
        rng = random.Random(f"{SETTINGS.seed}:{task.id}")
        backend = stored[(task.id, "greedy")]["backend"]
        replayed = collect.rows_from_samples(got, SETTINGS, latency, rng, backend)
        replayed += await collect.beam_rows(engine, task, SETTINGS, latency, follow, backend)
        for new in replayed:
            old = stored[(task.id, new.config)]
            new_latency[(task.id, new.config)] = new.latency_s
            if new.strategy == "beam":
                beam_label_changed += new.soft_label != old["soft_label"]
            elif new.config != "bo8-confidence" and abs(new.generated_tokens
                                                        - old["generated_tokens"]) > 1e-6:
                token_mismatch += 1
    missing = [k for k in stored if k not in new_latency]
    if missing:
        raise SystemExit(f"{len(missing)} rows were not replayed, e.g. {missing[:3]}")
    for r in rows:
        r["latency_s"] = new_latency[(r["query_id"], r["config"])]
    with gzip.open(data / "outcomes-steps.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    with gzip.open(data / "latency-steps.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(asdict(m)) + "\n" for m in measurements)
    return {"rows": len(rows), "latency_model": latency.coefficients,
            "replayed_token_mismatches": token_mismatch,
            "beam_labels_changed": beam_label_changed}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(remeasure()), indent=2))
    sys.exit(0)
