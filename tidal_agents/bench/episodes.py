"""`tidal-agents bench episodes`: agent episodes under deadlines, adaptive vs static.

Each task of `evaluation.agent_tasks` runs as a `langchain.agents.create_agent`
agent over `TidalChatModel`, inside ``model.episode(deadline_s=...)``, once
per policy (the adaptive allocator, and each static strategy fixed with
``strategy=``). Every task draws its deadline from the seeded mix (``--deadlines``)
and its tools' delay from ``--tool-delay`` (seeded per task): every policy sees
the same task, deadline and delays, so policies are compared pairwise.

Every episode ends one way of four (`trace.outcomes`): a usable reply by the
deadline, no usable reply by the deadline (empty, a protocol fragment, only an
invalid tool call), an error, or after the deadline. Per policy and deadline,
and pooled over the deadlines:

* ``success_rate``: a usable final reply by the deadline that states the gold number;
* ``usable_within_deadline_rate``, ``no_usable_reply_rate``, ``error_rate``,
  ``over_deadline_rate``: the four outcomes; ``deadline_hit_rate`` is
  ``usable_within_deadline_rate`` (a reply cut to nothing does not meet a deadline);
* ``cut_short_step_rate``: steps stopped at their allowance, over all steps;
* ``mean_tokens``: prompt + generated tokens per episode; ``mean_output_tokens``
  the generated ones (what ``pooled`` reports as ``tokens``);
* ``latency_pred_median_abs_rel_error``: ``|predicted - actual| / actual`` over every
  step, a cut-short step scored with its allowance as the actual (its true time is
  at least that); the first step of each episode separately under ``first_step``;
* ``best_static_meeting_deadline``: per deadline, the static policy with the
  highest success rate among those whose over-deadline rate is <= 0.01, and
  ``adaptive_vs_best_static`` the adaptive policy beside it; ``pooled`` the same
  over all deadlines with a paired bootstrap interval over tasks.

The agent is the one an agent builder would write for these tasks: create_agent,
`ToolFirstMiddleware(max_tool_calls=len(plan))` (a tool call first; an answer
once the task's calls are made) and ``expected_steps`` = calls + 1 for the
episode's step allowances.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from tidal_agents.allocation import default_grid
from tidal_agents.chat_model import TidalChatModel
from tidal_agents.episode import EpisodeSettings
from tidal_agents.errors import TidalConfigError
from tidal_agents.evaluation.agent_tasks import (
    ONE_CALL_KINDS,
    AgentTask,
    agent_tasks,
    grade_messages,
    langchain_tools,
)
from tidal_agents.evaluation.figures import paired_difference
from tidal_agents.trace.outcomes import classify_episode, outcome_rates
from tidal_agents.types import StrategyConfig

SYSTEM_PROMPT = (
    "You solve the user's problem with the tools. Call one tool at a time. "
    "When you have the result, answer with the final number."
)
#: static strategies that can run every step of a tool episode (beam search cannot
#: keep a tool-call grammar across its steps, so it is not one of them)
STATIC_POLICIES = ("greedy", "bo4-majority", "bo8-confidence", "bo16-majority")
#: the deadline mix (seconds) each task draws from: tight enough to bind on this
#: 2-core CPU (a greedy one-call episode takes ~2 s, bo16 ~5 s), and loose ones
DEFAULT_DEADLINES = (2.5, 4.0, 8.0, 12.0)
QUICK_DEADLINES = (4.0, 15.0)
#: each task's tools sleep a seeded delay drawn uniformly from this range (seconds)
DEFAULT_TOOL_DELAY = (0.1, 1.5)
#: a static policy "meets the deadline" when at most this share of its episodes
#: end after the deadline
MAX_OVER_DEADLINE = 0.01
#: what a redefined key means now (also in the JSON, under "definitions")
DEFINITIONS = {
    "deadline_hit_rate": "episodes that returned a usable reply by the deadline "
    "(= usable_within_deadline_rate); a reply cut to nothing is not a hit",
    "success_rate": "a usable final reply by the deadline that states the gold number",
    "latency_pred_median_abs_rel_error": "median |predicted - actual| / actual over all "
    "steps; a cut-short step is scored with its allowance as the actual (a lower bound)",
    "tokens": "generated (output) tokens per episode",
    "adaptive_empty_endings_with_budget_left": "adaptive episodes with no usable reply "
    "that returned with more than the episode's safety margin still left (an episode that "
    "used its time up to the margin had no budget left); "
    "adaptive_no_usable_reply_before_deadline counts every one returned by the deadline",
}


def budget_left(outcome: EpisodeOutcome) -> bool:
    """The episode returned with more than its safety margin (and 50 ms) still left."""
    margin = EpisodeSettings(deadline_s=outcome.deadline_s).margin_s
    return outcome.deadline_s - outcome.wall_s > margin + 0.05


@dataclass(frozen=True)
class EpisodeOutcome:
    task_id: str
    policy: str
    deadline_s: float
    success: bool
    tool_result_correct: bool
    #: one of trace.outcomes.OUTCOMES
    outcome: str
    wall_s: float
    tokens: int
    steps: int
    tool_calls: tuple[str, ...]
    output_tokens: int = 0
    cut_short_steps: int = 0
    tool_delay_s: float = 0.0
    #: (predicted latency, actual wall or allowance if cut short) per step, in order
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
    """(predicted, actual) latency of every step, from trace records.

    A step cut short at its allowance ran at least that long: its actual is the
    allowance (a lower bound), so under-predicted steps are not left out.
    """
    pairs = []
    for s in steps:  # StepRecord.model_dump(): predicted_latency_s, spent.wall_s
        pred = s.get("predicted_latency_s")
        actual = (s.get("spent") or {}).get("wall_s")
        if s.get("cut_short") and s.get("allowance_s"):
            actual = max(float(s["allowance_s"]), float(actual or 0.0))
        if pred is not None and actual is not None and actual > 0:
            pairs.append((float(pred), float(actual)))
    return pairs


def run_episode(
    model: Any,
    task: AgentTask,
    deadline_s: float,
    policy: str,
    recursion_limit: int = 10,
    tool_delay_s: float = 0.0,
) -> EpisodeOutcome:
    """One agent episode under `deadline_s`, graded."""
    from langchain.agents import create_agent
    from langchain_core.messages import AIMessage

    from tidal_agents.integrations.langchain_middleware import ToolFirstMiddleware

    agent = create_agent(
        model=model, tools=langchain_tools(task.tools, delay_s=tool_delay_s),
        system_prompt=SYSTEM_PROMPT,
        middleware=[ToolFirstMiddleware(max_tool_calls=len(task.plan))],
    )
    messages: list[Any] = []
    error = None
    t0 = time.monotonic()
    with model.episode(deadline_s=deadline_s, expected_steps=task.expected_steps) as ep:
        try:
            request: Any = {"messages": [("user", task.question)]}
            result = agent.invoke(request, {"recursion_limit": recursion_limit})
            messages = list(result["messages"])
        except Exception as exc:  # deadline refusals, recursion limit, engine errors
            error = f"{type(exc).__name__}: {exc}"[:300]
    wall = time.monotonic() - t0
    steps = _trace_steps(ep.trace)
    final = messages[-1] if messages else None
    outcome = classify_episode(final, wall, deadline_s, raised=error is not None)
    grade = grade_messages(task, messages) if messages else None
    ai = [m for m in messages if isinstance(m, AIMessage) and m.usage_metadata]
    return EpisodeOutcome(
        task_id=task.id, policy=policy, deadline_s=deadline_s,
        success=bool(grade and grade.success) and outcome == "usable",
        tool_result_correct=bool(grade and grade.tool_result_correct),
        outcome=outcome, wall_s=wall,
        tokens=_usage_total(ai, "total_tokens"),
        output_tokens=_usage_total(ai, "output_tokens"),
        steps=len(steps),
        cut_short_steps=sum(bool(s.get("cut_short")) for s in steps),
        tool_delay_s=tool_delay_s,
        tool_calls=grade.tool_calls if grade else (),
        step_latency=tuple(step_latency_pairs(steps)),
        strategies=tuple(str(s.get("strategy", "")) for s in steps),
        final_text=grade.final_text if grade else "",
        error=error,
    )


def _usage_total(messages: Sequence[Any], key: str) -> int:
    return sum((int(m.usage_metadata.get(key, 0)) for m in messages), start=0)


def _rel_errors(outcomes: Sequence[EpisodeOutcome], first_only: bool = False) -> list[float]:
    pairs = [
        pair for o in outcomes
        for pair in (o.step_latency[:1] if first_only else o.step_latency)
    ]
    return [abs(p - a) / a for p, a in pairs]


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def group_figures(group: Sequence[EpisodeOutcome]) -> dict[str, Any]:
    """The figures of one group of episodes (a policy at one deadline, or pooled)."""
    n = len(group)
    steps = sum(o.steps for o in group)
    rates = outcome_rates([o.outcome for o in group])  # type: ignore[misc]
    return {
        "episodes": n,
        "success_rate": sum(o.success for o in group) / n,
        "tool_result_rate": sum(o.tool_result_correct for o in group) / n,
        **rates,
        "deadline_hit_rate": rates["usable_within_deadline_rate"],
        "cut_short_step_rate": sum(o.cut_short_steps for o in group) / steps if steps else None,
        "mean_tokens": statistics.fmean(o.tokens for o in group),
        "mean_output_tokens": statistics.fmean(o.output_tokens for o in group),
        "mean_wall_s": statistics.fmean(o.wall_s for o in group),
        "mean_steps": statistics.fmean(o.steps for o in group),
        "latency_pred_median_abs_rel_error": _median(_rel_errors(group)),
        "latency_pred_first_step_median_abs_rel_error": _median(_rel_errors(group, True)),
    }


def _best_static(figures: dict[str, dict[str, Any]]) -> str | None:
    """The static policy with the highest success among those meeting the deadline;
    ties go to the cheaper one (fewer output tokens), the stronger baseline."""
    meeting = [
        p for p, f in figures.items()
        if p != "adaptive" and (f["over_deadline_rate"] or 0.0) <= MAX_OVER_DEADLINE
    ]
    meeting.sort(key=lambda p: (-figures[p]["success_rate"], figures[p]["mean_output_tokens"]))
    return meeting[0] if meeting else None


def _versus(
    outcomes: Sequence[EpisodeOutcome], figures: dict[str, dict[str, Any]]
) -> dict[str, Any] | None:
    """Adaptive beside the best static policy, paired over the same episodes."""
    best = _best_static(figures)
    ada = figures.get("adaptive")
    if ada is None:
        return None
    by_key = {(o.policy, o.task_id, o.deadline_s): o for o in outcomes}
    keys = [(t, d) for (p, t, d) in by_key if p == "adaptive" and (best, t, d) in by_key]
    paired = paired_difference(
        [by_key["adaptive", t, d].success for t, d in keys],
        [by_key[best, t, d].success for t, d in keys],
    ) if best else None
    return {
        "best_static": best,
        "adaptive_success_rate": ada["success_rate"],
        "best_static_success_rate": figures[best]["success_rate"] if best else None,
        "adaptive_output_tokens": ada["mean_output_tokens"],
        "best_static_output_tokens": figures[best]["mean_output_tokens"] if best else None,
        "success_difference": paired,
        "adaptive_success_at_least_best_static_minus_0.02": (
            ada["success_rate"] >= figures[best]["success_rate"] - 0.02 if best else True
        ),
    }


def summarise(outcomes: Sequence[EpisodeOutcome]) -> dict[str, Any]:
    """Figures per policy and deadline, pooled over deadlines, and overall."""
    policies_seen = sorted({o.policy for o in outcomes})
    deadlines = sorted({o.deadline_s for o in outcomes})
    table: dict[str, dict[str, dict[str, Any]]] = {
        p: {f"{d:g}": group_figures(g) for d in deadlines
            if (g := [o for o in outcomes if o.policy == p and o.deadline_s == d])}
        for p in policies_seen
    }
    pooled_full = {p: group_figures([o for o in outcomes if o.policy == p])
                   for p in policies_seen}
    per_deadline = {
        f"{d:g}": [o for o in outcomes if o.deadline_s == d] for d in deadlines
    }
    versus = {
        dk: v for dk, group in per_deadline.items()
        if (v := _versus(group, {p: t[dk] for p, t in table.items() if dk in t})) is not None
    }
    adaptive = [o for o in outcomes if o.policy == "adaptive"]
    return {
        "definitions": DEFINITIONS,
        "pooled": {
            p: {"success": f["success_rate"], "tokens": f["mean_output_tokens"],
                "episodes": f["episodes"]} for p, f in pooled_full.items()
        },
        "pooled_figures": pooled_full,
        "pooled_adaptive_vs_best_static": _versus(outcomes, pooled_full),
        "per_policy": table,
        "best_static_meeting_deadline": {dk: v["best_static"] for dk, v in versus.items()},
        "adaptive_vs_best_static": versus,
        "success_rate": {p: {d: v["success_rate"] for d, v in t.items()}
                         for p, t in table.items()},
        "deadline_hit_rate": (
            pooled_full["adaptive"]["deadline_hit_rate"] if "adaptive" in pooled_full else None
        ),
        "deadline_hit_rate_per_policy": {
            p: {d: v["deadline_hit_rate"] for d, v in t.items()} for p, t in table.items()
        },
        "mean_tokens": {p: {d: v["mean_tokens"] for d, v in t.items()} for p, t in table.items()},
        **{key: {p: f[key] for p, f in pooled_full.items()} for key in (
            "usable_within_deadline_rate", "no_usable_reply_rate", "error_rate",
            "over_deadline_rate", "cut_short_step_rate",
        )},
        "over_deadline_rate_all": outcome_rates([o.outcome for o in outcomes])[  # type: ignore[misc]
            "over_deadline_rate"
        ],
        "adaptive_empty_endings_with_budget_left": sum(
            o.outcome == "no_usable_reply" and budget_left(o) for o in adaptive
        ),
        "adaptive_no_usable_reply_before_deadline": sum(
            o.outcome == "no_usable_reply" and o.wall_s < o.deadline_s for o in adaptive
        ),
        "latency_pred_median_abs_rel_error": _median(_rel_errors(outcomes)),
        "latency_pred_first_step": {
            "median_abs_rel_error": _median(_rel_errors(outcomes, True)),
            "steps": len(_rel_errors(outcomes, True)),
        },
        "latency_pred_steps": len(_rel_errors(outcomes)),
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`tidal-agents bench episodes`' options."""
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens per sample")
    parser.add_argument("--quick", action="store_true",
                        help="3 tasks, 2 static policies, deadlines 4 15 (for smoke tests)")
    parser.add_argument("--deadlines", type=float, nargs="+", default=None, metavar="S",
                        help="the deadline mix in seconds each task draws from "
                        "(default 2.5 4 8 12; --quick: 4 15)")
    parser.add_argument("--tool-delay", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                        help="each task's tools sleep a seeded delay in [LO, HI] seconds "
                        "(default 0.1 1.5; 0 0 for instant tools)")
    parser.add_argument("--tasks", type=int, default=None,
                        help="number of tasks (default 48; --quick: 3)")
    parser.add_argument("--kinds", nargs="+", default=None, metavar="KIND",
                        help="task kinds (default: the one-call kinds)")
    parser.add_argument("--seed", type=int, default=0, help="task seed (default 0)")
    parser.add_argument("--episodes-out", default=None, metavar="PATH",
                        help="write every graded episode here (JSONL)")


def episode_plan(
    tasks: Sequence[AgentTask],
    deadlines: Sequence[float],
    delay_range: Sequence[float],
    seed: int,
) -> list[tuple[AgentTask, float, float]]:
    """Each task with a deadline drawn from the mix and a tool delay drawn from the
    range, both seeded per task, so every policy runs the same episodes."""
    lo, hi = (float(delay_range[0]), float(delay_range[-1]))
    if not 0 <= lo <= hi <= 60:
        raise TidalConfigError(
            f"tool_delay={list(delay_range)}: allowed is 'lo,hi' seconds, 0 <= lo <= hi <= 60."
        )
    plan = []
    for task in tasks:
        rng = random.Random(f"{seed}:{task.id}")
        plan.append((task, rng.choice(list(deadlines)), round(rng.uniform(lo, hi), 3)))
    return plan


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
    delay_range = tuple(getattr(args, "tool_delay", None) or DEFAULT_TOOL_DELAY)
    plan = [
        (task, deadline, delay, policy)
        for task, deadline, delay in episode_plan(tasks, deadlines, delay_range, seed)
        for policy in pols
    ]
    outcomes = [
        run_episode(models[policy], task, deadline, policy, tool_delay_s=delay)
        for task, deadline, delay, policy in tqdm(plan, desc="episodes", file=sys.stderr)
    ]
    summary = summarise(outcomes)
    summary["deadlines_s"] = list(deadlines)
    summary["tool_delay_s"] = list(delay_range)
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
