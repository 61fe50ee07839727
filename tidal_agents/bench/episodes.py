"""`tidal-agents bench episodes`: agent episodes under deadlines, adaptive vs static.

Each task of `evaluation.agent_tasks` runs as a `langchain.agents.create_agent`
agent over `TidalChatModel`, inside ``model.episode(deadline_s=...)``, once
per policy (the adaptive allocator, and each static strategy fixed with
``strategy=``) and per deadline. Per (policy, deadline):

* ``success_rate``: the final message states the gold number;
* ``deadline_hit_rate``: episodes that met their deadline: they finished
  without `EpisodeDeadlineExceeded` and their wall time (agent, tools and
  model steps) was within the deadline (a step cut short by its allowance is
  how the deadline is kept, not a miss);
  the top-level figure is the adaptive policy's, per policy under
  ``deadline_hit_rate_per_policy``;
* ``mean_tokens``: prompt + generated tokens over the episode's steps
  (from the messages' ``usage_metadata``);
* per-step latency prediction error: ``|predicted - actual| / actual`` with
  the decision's predicted latency and the step's measured wall time (from
  the episode trace);
* ``best_static_meeting_deadline``: per deadline, the static policy with the
  highest success rate among those whose hit rate is >= 0.99, and
  ``adaptive_vs_best_static`` the adaptive policy's success and hit rate beside it.

The agent is the one an agent builder would write for these tasks: create_agent,
`ToolFirstMiddleware(max_tool_calls=len(plan))` (a tool call first; an answer
once the task's calls are made) and ``expected_steps`` = calls + 1 for the
episode's step allowances.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from tidal_agents.allocation import default_grid
from tidal_agents.chat_model import TidalChatModel
from tidal_agents.errors import EpisodeDeadlineExceeded, TidalConfigError
from tidal_agents.evaluation.agent_tasks import (
    ONE_CALL_KINDS,
    AgentTask,
    agent_tasks,
    grade_messages,
    langchain_tools,
)
from tidal_agents.types import StrategyConfig

SYSTEM_PROMPT = (
    "You solve the user's problem with the tools. Call one tool at a time. "
    "When you have the result, answer with the final number."
)
#: static strategies that can run every step of a tool episode (beam search cannot
#: keep a tool-call grammar across its steps, so it is not one of them)
STATIC_POLICIES = ("greedy", "bo4-majority", "bo8-confidence", "bo16-majority")
#: default deadlines (seconds) of the full run: tight enough to bind on this
#: 2-core CPU (a greedy one-call episode takes ~2 s, bo16 ~5 s), and one loose
DEFAULT_DEADLINES = (2.5, 4.0, 8.0)
QUICK_DEADLINES = (4.0, 15.0)
#: a static policy "meets the deadline" at this hit rate (the issue's bar)
MEETS_DEADLINE = 0.99


@dataclass(frozen=True)
class EpisodeOutcome:
    task_id: str
    policy: str
    deadline_s: float
    success: bool
    tool_result_correct: bool
    deadline_hit: bool
    wall_s: float
    tokens: int
    steps: int
    tool_calls: tuple[str, ...]
    #: (predicted latency, actual wall) per step
    step_latency: tuple[tuple[float, float], ...] = ()
    strategies: tuple[str, ...] = ()
    #: the final message's text (first 300 characters), for inspection
    final_text: str = ""
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _trace_steps(trace: Any) -> list[dict[str, Any]]:
    """The episode trace's step records as dicts."""
    records = getattr(trace, "records", trace)
    out = []
    for r in records or ():
        if hasattr(r, "model_dump"):
            out.append(r.model_dump(mode="json"))
        elif hasattr(r, "__dataclass_fields__"):
            out.append(asdict(r))
        else:
            out.append(dict(r))
    return out


def step_latency_pairs(steps: Sequence[dict[str, Any]]) -> list[tuple[float, float]]:
    """(predicted, actual) latency of every step that ran to its end, from trace records.

    A step cut short at its allowance is left out: its wall time is where it was
    stopped, not how long it would have taken (a censored measurement).
    """
    pairs = []
    for s in steps:  # StepRecord.model_dump(): predicted_latency_s, spent.wall_s
        if s.get("cut_short"):
            continue
        pred = s.get("predicted_latency_s")
        actual = (s.get("spent") or {}).get("wall_s")
        if pred is not None and actual is not None and actual > 0:
            pairs.append((float(pred), float(actual)))
    return pairs


def _cut_short(steps: Sequence[dict[str, Any]]) -> bool:
    return any(bool(s.get("cut_short")) for s in steps)


def run_episode(
    model: Any, task: AgentTask, deadline_s: float, policy: str, recursion_limit: int = 10
) -> EpisodeOutcome:
    """One agent episode under `deadline_s`, graded."""
    from langchain.agents import create_agent
    from langchain_core.messages import AIMessage

    from tidal_agents.integrations.langchain_middleware import ToolFirstMiddleware

    agent = create_agent(
        model=model, tools=langchain_tools(task.tools), system_prompt=SYSTEM_PROMPT,
        middleware=[ToolFirstMiddleware(max_tool_calls=len(task.plan))],
    )
    messages: list[Any] = []
    error = None
    raised_deadline = False
    t0 = time.monotonic()
    with model.episode(deadline_s=deadline_s, expected_steps=task.expected_steps) as ep:
        try:
            request: Any = {"messages": [("user", task.question)]}
            result = agent.invoke(request, {"recursion_limit": recursion_limit})
            messages = list(result["messages"])
        except EpisodeDeadlineExceeded as exc:
            raised_deadline, error = True, f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # recursion limit, engine errors: a failed episode
            error = f"{type(exc).__name__}: {exc}"[:300]
    wall = time.monotonic() - t0
    steps = _trace_steps(ep.trace)
    grade = grade_messages(task, messages) if messages else None
    tokens = sum(
        int(m.usage_metadata["total_tokens"]) if m.usage_metadata else 0
        for m in messages if isinstance(m, AIMessage)
    )
    return EpisodeOutcome(
        task_id=task.id, policy=policy, deadline_s=deadline_s,
        success=bool(grade and grade.success),
        tool_result_correct=bool(grade and grade.tool_result_correct),
        deadline_hit=not raised_deadline and wall <= deadline_s,
        wall_s=wall, tokens=tokens, steps=len(steps),
        tool_calls=grade.tool_calls if grade else (),
        step_latency=tuple(step_latency_pairs(steps)),
        strategies=tuple(str(s.get("strategy", "")) for s in steps),
        final_text=grade.final_text if grade else "",
        error=error,
    )


def _rate(outcomes: Sequence[EpisodeOutcome]) -> float | None:
    return sum(o.deadline_hit for o in outcomes) / len(outcomes) if outcomes else None


def _rel_errors(outcomes: Sequence[EpisodeOutcome]) -> list[float]:
    return [abs(p - a) / a for o in outcomes for p, a in o.step_latency]


def summarise(outcomes: Sequence[EpisodeOutcome]) -> dict[str, Any]:
    """Figures per policy and deadline, and overall."""
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for policy in sorted({o.policy for o in outcomes}):
        table[policy] = {}
        for d in sorted({o.deadline_s for o in outcomes}):
            group = [o for o in outcomes if o.policy == policy and o.deadline_s == d]
            if not group:
                continue
            errs = _rel_errors(group)
            table[policy][f"{d:g}"] = {
                "episodes": len(group),
                "success_rate": sum(o.success for o in group) / len(group),
                "tool_result_rate": sum(o.tool_result_correct for o in group) / len(group),
                "deadline_hit_rate": sum(o.deadline_hit for o in group) / len(group),
                "mean_tokens": statistics.fmean(o.tokens for o in group),
                "mean_wall_s": statistics.fmean(o.wall_s for o in group),
                "mean_steps": statistics.fmean(o.steps for o in group),
                "latency_pred_median_abs_rel_error": statistics.median(errs) if errs else None,
            }
    errs = _rel_errors(outcomes)
    best_static: dict[str, dict[str, Any] | None] = {}
    versus: dict[str, dict[str, Any]] = {}
    for dk in sorted({f"{o.deadline_s:g}" for o in outcomes}, key=float):
        meeting = [
            (v[dk]["success_rate"], p) for p, v in table.items()
            if p != "adaptive" and dk in v and v[dk]["deadline_hit_rate"] >= MEETS_DEADLINE
        ]
        # ties: the cheaper policy (fewer mean tokens) is the stronger baseline
        meeting.sort(key=lambda sp: (-sp[0], table[sp[1]][dk]["mean_tokens"]))
        best = meeting[0] if meeting else None
        best_static[dk] = (
            {"policy": best[1], "success_rate": best[0],
             "deadline_hit_rate": table[best[1]][dk]["deadline_hit_rate"]}
            if best else None
        )
        ada = table.get("adaptive", {}).get(dk)
        if ada is not None:
            versus[dk] = {
                "adaptive_success_rate": ada["success_rate"],
                "adaptive_deadline_hit_rate": ada["deadline_hit_rate"],
                "best_static_success_rate": best[0] if best else None,
                "adaptive_success_at_least_best_static": (
                    ada["success_rate"] >= best[0] if best else True
                ),
            }
    return {
        "per_policy": table,
        "best_static_meeting_deadline": best_static,
        "adaptive_vs_best_static": versus,
        "success_rate": {p: {d: v["success_rate"] for d, v in t.items()}
                         for p, t in table.items()},
        "deadline_hit_rate": _rate([o for o in outcomes if o.policy == "adaptive"]),
        "deadline_hit_rate_per_policy": {
            p: {d: v["deadline_hit_rate"] for d, v in t.items()} for p, t in table.items()
        },
        "mean_tokens": {p: {d: v["mean_tokens"] for d, v in t.items()} for p, t in table.items()},
        "latency_pred_median_abs_rel_error": statistics.median(errs) if errs else None,
        "latency_pred_steps": len(errs),
        "episodes": len(outcomes),
    }


def policies(max_tokens: int, quick: bool) -> dict[str, Any]:
    """name -> StrategyConfig (None = adaptive)."""
    grid = {c.name: c for c in default_grid(max_tokens=max_tokens)}
    names = STATIC_POLICIES[:2] if quick else STATIC_POLICIES
    out: dict[str, Any] = {"adaptive": None}
    out.update({n: grid[n] for n in names if n in grid})
    return out


def warm_up(model: Any, config: Any = None) -> float:
    """Start the shared engine and pay one-off costs (first request, first grammar)
    outside any episode, so that no episode's deadline includes them. Returns seconds."""
    t0 = time.monotonic()
    _ = model.engine  # starts the engine all the policies' models share
    warm = TidalChatModel(max_tokens=8, engine_config=config,
                          strategy=StrategyConfig("single", temperature=0.0, max_tokens=8))
    warm.invoke("Say hi.")
    warm.bind_tools(langchain_tools()).invoke("What is 2 times 3?")
    return time.monotonic() - t0


def run(config: Any = None, args: Any = None) -> dict[str, Any]:
    """Entry point of `tidal-agents bench episodes`."""
    from tqdm import tqdm

    quick = bool(getattr(args, "quick", False))
    max_tokens = int(getattr(args, "max_tokens", 64) or 64)
    deadlines = tuple(getattr(args, "deadlines", None)
                      or (QUICK_DEADLINES if quick else DEFAULT_DEADLINES))
    kinds = getattr(args, "kinds", None) or ONE_CALL_KINDS
    bad = [d for d in deadlines if not (isinstance(d, (int, float)) and 0 < d < 3600)]
    if bad:
        raise TidalConfigError(f"deadlines {bad}: allowed are seconds in (0, 3600).")
    seed = int(getattr(args, "seed", 0) or 0)
    tasks = agent_tasks(int(getattr(args, "tasks", 0) or (3 if quick else 48)), seed=seed,
                        kinds=tuple(kinds))
    pols = policies(max_tokens, quick)
    models = {
        name: TidalChatModel(max_tokens=max_tokens, strategy=cfg, engine_config=config)
        for name, cfg in pols.items()
    }
    warm_up(models["adaptive"], config)
    outcomes = []
    plan = [(t, d, p) for d in deadlines for t in tasks for p in pols]
    for task, deadline, policy in tqdm(plan, desc="episodes", file=sys.stderr):
        outcomes.append(run_episode(models[policy], task, deadline, policy))
    summary = summarise(outcomes)
    summary["deadlines_s"] = list(deadlines)
    summary["tasks"] = len(tasks)
    summary["seed"] = seed
    summary["kinds"] = list(dict.fromkeys(t.kind for t in tasks))
    summary["policies"] = {n: (c.name if c else "adaptive") for n, c in pols.items()}
    out_path = getattr(args, "episodes_out", None)
    if out_path:
        with open(out_path, "w", encoding="utf-8") as fh:
            for o in outcomes:
                fh.write(json.dumps(asdict(o)) + "\n")
    return summary
