"""Best-of-N at two sampling temperatures on the chat model's own steps (held-out seed).

The default grid samples at temperature 0.7. On a 135M model a single sample at
0.7 is much worse than greedy, so a lower temperature might make small votes pay.
This script measures it: every step is rendered as the chat model renders it
(`collect.prepare`), one greedy request and one n=16 request per temperature are
sent, and each best-of-N configuration of the step's grid is bootstrapped from
that temperature's samples and finished as the chat model finishes a step
(`collect.rows_from_samples`). Output: mean soft label and generated tokens per
step kind, tool choice, temperature and configuration.

    .venv/bin/python scripts/compare_temperature.py --temperatures 0.3,0.7 \
        --task arith:40 agent:10 --seed 11 --out docs/results/temperature.json

Seed 11 is used by no training collection and no committed bench. ~5 min on a
quiet 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tidal_agents.bench.results import results_document  # noqa: E402
from tidal_agents.engine import EngineConfig, get_engine  # noqa: E402
from tidal_agents.evaluation import collect as C  # noqa: E402
from tidal_agents.strategies._common import to_candidate  # noqa: E402

LATENCY = ROOT / "tidal_agents" / "data" / "latency-steps.jsonl.gz"


async def compare(temperatures: list[float], specs: list[str], seed: int) -> dict[str, Any]:
    engine = get_engine(EngineConfig())
    settings = C.CollectSettings(beams=False, seed=seed)
    latency = C.LatencyModel.fit([C.LatencyMeasurement(**m) for m in C.read_rows(LATENCY)])
    steps = C.load_steps(specs, seed=seed)
    found: dict[str, dict[tuple[float, str], list[tuple[float, float]]]] = (
        collections.defaultdict(lambda: collections.defaultdict(list)))

    async def one(task: C.StepTask) -> tuple[C.StepTask, dict[float, dict[str, Any]]]:
        prepared = C.prepare(engine, task, settings)
        step = prepared.step_input()
        requests = [C._request(prepared, 1, 0.0)]
        requests += [C._request(prepared, settings.n_max, t) for t in temperatures]
        if task.kind == "tool_answer":
            requests.append(C._request(prepared, 1, 0.0, C._guard_input(prepared)))
        results = await asyncio.gather(*(engine.generate(r) for r in requests))
        greedy = to_candidate(results[0].samples[0], step)
        guard = to_candidate(results[-1].samples[0], step) if task.kind == "tool_answer" else None
        out = {}
        for j, t in enumerate(temperatures):
            samples = tuple(to_candidate(s, step) for s in results[1 + j].samples)
            got = C.StepSamples(task, prepared, samples, C.FollowUps(greedy, guard))
            rows = C.rows_from_samples(got, settings, latency,
                                       random.Random(f"{seed}:{task.id}"), "compare")
            out[t] = {r.config: (r.soft_label, r.generated_tokens) for r in rows}
        return task, out

    t0 = time.perf_counter()
    for start in range(0, len(steps), settings.concurrency):
        batch = steps[start : start + settings.concurrency]
        for task, out in await asyncio.gather(*(one(t) for t in batch)):
            key = f"{task.kind}/{task.tool_choice or 'auto'}"
            for t, rows in out.items():
                for config, value in rows.items():
                    found[key][(t, config)].append(value)
        print(f"{start + len(batch)}/{len(steps)} {time.perf_counter() - t0:.0f}s",
              file=sys.stderr, flush=True)
    table = {
        key: {f"T{t}:{config}": {"soft_label": float(np.mean([v[0] for v in values])),
                                 "generated_tokens": float(np.mean([v[1] for v in values])),
                                 "steps": len(values)}
              for (t, config), values in sorted(by.items())}
        for key, by in found.items()
    }
    return {"by_step": table, "steps": len(steps), "wall_s": time.perf_counter() - t0}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--temperatures", default="0.3,0.7")
    p.add_argument("--task", nargs="+", default=["arith:40", "agent:10"])
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    temperatures = [float(t) for t in args.temperatures.split(",")]
    result = asyncio.run(compare(temperatures, args.task, args.seed))
    doc = results_document("temperature", result, args, result["wall_s"])
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
