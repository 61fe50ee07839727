"""`tidal-agents bench load`: many concurrent episodes with deadlines on one engine.

At each concurrency level, that many episodes start at once (asyncio tasks on
one `TidalChatModel`, so one engine). Each episode has its own deadline and runs
``steps`` model calls (graded arithmetic questions). Per level:

* the four episode outcomes (`trace.outcomes`): ``usable_within_deadline_rate``
  (every step ran and the last reply is usable, by the deadline),
  ``no_usable_reply_rate``, ``error_rate``, ``over_deadline_rate``;
  ``deadline_hit_rate`` is ``usable_within_deadline_rate`` (see ``definitions``);
* ``cut_short_step_rate``: steps stopped at their allowance;
* ``p50_step_s`` / ``p99_step_s``: measured wall time of the steps;
* ``latency_pred_median_abs_rel_error``: over every step, a cut-short step scored
  with its allowance as the actual;
* ``median_predicted_step_s`` and ``mean_samples_per_step``: what the controller
  expected and chose. The engine's in-flight sequences are a step feature, so
  predictions rise with load and the choices get cheaper;
* ``isolated``: every episode's trace holds exactly its own steps, numbered
  0..steps-1 (no state leaked between concurrent episodes).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Sequence
from typing import Any

from tidal_agents.bench.episodes import step_latency_pairs
from tidal_agents.chat_model import TidalChatModel
from tidal_agents.episode import Episode
from tidal_agents.errors import EpisodeDeadlineExceeded
from tidal_agents.evaluation.tasks import graded_arithmetic
from tidal_agents.trace.outcomes import EpisodeOutcome, classify_episode, outcome_rates

LEVELS = (1, 10, 50)
#: what a redefined key means now
DEFINITIONS = {
    "deadline_hit_rate": "episodes whose every step ran and whose last reply is usable, "
    "by the deadline (= usable_within_deadline_rate); a step cut to nothing is no hit",
}
QUICK_LEVELS = (1, 5, 20)


async def _episode(model: Any, index: int, questions: Sequence[str], deadline_s: float,
                   trace_path: str | None) -> tuple[Episode, EpisodeOutcome, str | None]:
    error = None
    reply = None
    with model.episode(deadline_s=deadline_s, expected_steps=len(questions),
                       trace_path=trace_path) as ep:
        try:
            for question in questions:
                reply = await model.ainvoke(question)
        except EpisodeDeadlineExceeded as exc:
            error = f"deadline: {exc}"
        except Exception as exc:  # engine errors and anything else: an error outcome
            error = f"{type(exc).__name__}: {exc}"
    outcome = classify_episode(reply, ep.elapsed_s(), deadline_s, raised=error is not None)
    return ep, outcome, error


async def run_level(model: Any, concurrency: int, deadline_s: float, steps: int,
                    seed: int = 0, trace_dir: str | None = None) -> dict[str, Any]:
    """`concurrency` episodes at once; figures of that level."""
    items = graded_arithmetic(concurrency * steps, seed=seed)
    t0 = time.perf_counter()
    results = await asyncio.gather(*(
        _episode(model, i, [it.question for it in items[i * steps:(i + 1) * steps]],
                 deadline_s, f"{trace_dir}/load-{concurrency}-{i}.jsonl" if trace_dir else None)
        for i in range(concurrency)
    ))
    wall = time.perf_counter() - t0
    records = [r for ep, _, _ in results for r in ep.trace.records]
    walls = sorted(r.spent.wall_s for r in records if r.spent is not None)
    predicted = [r.predicted_latency_s for r in records if r.predicted_latency_s is not None]
    ids = {ep.id for ep, _, _ in results}
    isolated = len(ids) == concurrency and all(
        [r.step_index for r in ep.trace.records] == list(range(len(ep.trace)))
        and all(r.episode_id == ep.id for r in ep.trace.records)
        for ep, _, _ in results
    )
    rates = outcome_rates([outcome for _, outcome, _ in results])
    errors = [abs(p - a) / a for p, a in step_latency_pairs(
        [r.model_dump(mode="json") for r in records])]
    return {
        "episodes": concurrency,
        "deadline_s": deadline_s,
        **rates,
        "deadline_hit_rate": rates["usable_within_deadline_rate"],
        "cut_short_step_rate": (
            sum(r.cut_short for r in records) / len(records) if records else None
        ),
        "latency_pred_median_abs_rel_error": statistics.median(errors) if errors else None,
        "p50_step_s": _quantile(walls, 0.5),
        "p99_step_s": _quantile(walls, 0.99),
        "median_predicted_step_s": statistics.median(predicted) if predicted else None,
        "mean_samples_per_step": statistics.fmean(r.n for r in records) if records else None,
        "max_concurrent_sequences_seen": max(
            (int(r.features.get("concurrent_sequences", 0)) for r in records), default=0
        ),
        "steps": len(records),
        "errors": [e for _, _, e in results if e is not None][:5],
        "isolated": isolated,
        "wall_s": wall,
    }


def _quantile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank quantile (p99 of 40 values is the largest: no interpolation)."""
    if not values:
        return None
    rank = max(int(-(-q * len(values) // 1)), 1)  # ceil(q n), at least 1
    return float(sorted(values)[min(rank, len(values)) - 1])


def run_load(model: Any, levels: Sequence[int] = LEVELS, deadline_s: float = 60.0,
             steps: int = 2) -> dict[str, Any]:
    async def all_levels() -> dict[str, Any]:
        out: dict[str, Any] = {}
        for level in levels:
            out[str(level)] = await run_level(model, level, deadline_s, steps)
        return out

    return asyncio.run(all_levels())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`tidal-agents bench load`'s options."""
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens per sample")
    parser.add_argument("--quick", action="store_true",
                        help=f"concurrency levels {QUICK_LEVELS} instead of {LEVELS}")
    parser.add_argument("--deadline", type=float, default=None,
                        help="each episode's deadline, seconds (default 60)")


def run(config: Any = None, args: Any = None) -> dict[str, Any]:
    quick = bool(getattr(args, "quick", False))
    max_tokens = int(getattr(args, "max_tokens", 64) or 64)
    deadline = float(getattr(args, "deadline", None) or 60.0)
    model = TidalChatModel(
        model_name=getattr(config, "model", None), max_tokens=max_tokens,
        engine_config=config,
    )
    model.engine.start()
    figures = run_load(model, QUICK_LEVELS if quick else LEVELS, deadline_s=deadline)
    figures["max_tokens"] = max_tokens
    figures["definitions"] = DEFINITIONS
    return figures
