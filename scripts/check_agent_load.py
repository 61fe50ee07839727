"""Concurrent `create_agent` episodes on one engine, as a new user would run them
(run outside make test; writes docs/results/agent_load.json).

Each episode is a thread with its own ``model.episode(deadline_s=...)`` around a
plain `create_agent` agent with one three-argument tool. Per level it reports the
four outcomes (`trace.outcomes`) and the engine errors raised by steps.

    .venv/bin/python scripts/check_agent_load.py [docs/results/agent_load.json]
"""

from __future__ import annotations

import concurrent.futures
import json
import sys
from pathlib import Path
from typing import Any

from langchain.agents import create_agent
from langchain_core.tools import tool

from tidal_agents import TidalChatModel
from tidal_agents.engine.local import shutdown_all
from tidal_agents.trace.outcomes import classify_episode, outcome_rates

#: (label, concurrent episodes, deadline in seconds, fresh engine)
LEVELS = (("cold-4x12s", 4, 12.0, True), ("warm-16x12s", 16, 12.0, False),
          ("warm-50x30s", 50, 30.0, False))


@tool
def box_volume(length: float, width: float, height: float) -> float:
    """Volume of a box from its three side lengths."""
    return length * width * height


def _episode(model: TidalChatModel, index: int, deadline_s: float) -> dict[str, Any]:
    a, b, c = 2 + index % 5, 3 + index % 4, 4 + index % 3
    agent = create_agent(model=model, tools=[box_volume],
                         system_prompt="Use the tool, then answer with the number.")
    final, error = None, None
    # the episode's clock starts once the engine has started (model.episode starts
    # it first): a cold engine's start-up is not episode time
    with model.episode(deadline_s=deadline_s) as ep:
        try:
            out = agent.invoke({"messages": [("user", f"What is the volume of a box "
                                                       f"{a} by {b} by {c}?")]},
                               {"recursion_limit": 8})
            final = out["messages"][-1]
        except Exception as exc:  # an error outcome, counted by type below
            error = f"{type(exc).__name__}: {exc}"[:200]
        wall = ep.elapsed_s()
    return {"outcome": classify_episode(final, wall, deadline_s, raised=error is not None),
            "wall_s": round(wall, 3), "error": error, "steps": len(ep.trace),
            "cut_short_steps": sum(r.cut_short for r in ep.trace),
            "correct": bool(final is not None and str(a * b * c) in str(final.content))}


def run_level(count: int, deadline_s: float, fresh: bool) -> dict[str, Any]:
    if fresh:
        shutdown_all()
    model = TidalChatModel(max_tokens=64)
    if not fresh:  # a warm engine: one episode first
        _episode(model, 0, deadline_s)
    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        runs = list(pool.map(lambda i: _episode(model, i, deadline_s), range(count)))
    errors = [r["error"] for r in runs if r["error"]]
    return {
        "episodes": count, "deadline_s": deadline_s, "fresh_engine": fresh,
        **outcome_rates([r["outcome"] for r in runs]),
        "engine_errors": sum("TidalEngineError" in e for e in errors),
        "correct_rate": sum(r["correct"] for r in runs) / count,
        "max_wall_s": max(r["wall_s"] for r in runs),
        "cut_short_step_rate": (sum(r["cut_short_steps"] for r in runs)
                                / max(sum(r["steps"] for r in runs), 1)),
        "errors": errors[:5],
    }


def main() -> int:
    results = {label: run_level(n, d, fresh) for label, n, d, fresh in LEVELS}
    text = json.dumps(results, indent=2)
    print(text)
    if len(sys.argv) > 1:
        Path(sys.argv[1]).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
