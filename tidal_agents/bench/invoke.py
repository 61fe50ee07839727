"""`tidal-agents bench invoke`: the default chat model against each fixed strategy,
through `TidalChatModel.invoke`, on steps the shipped predictor was not trained on.

The steps are the kinds an agent produces (`evaluation.step_tasks`): free-text
questions (graded arithmetic of another seed, GSM8K items after the ones
collected), tool-call steps and answer steps after tool results (agent tasks of
another seed), each under tool_choice "auto" and as `ToolFirstMiddleware` asks
("any" on the call, "none" on the answer; passed to ``bind_tools``). Any step
whose question is in the shipped training rows is dropped. Every step is invoked
once per policy, the policies in a rotated order per step: ``adaptive`` is
`TidalChatModel` with its defaults (the trained predictor decides), the others
are the same model with ``strategy=`` each configuration of the default grid
that every step kind can run (best-of-N and greedy; beam search runs on
free-text steps only, so it is not a policy here).

Figures: per policy the accuracy (graded like `collect`) and the mean output
tokens; the best static policy (highest accuracy, fewer tokens on a tie: chosen
on these same steps, which favours the baseline); adaptive minus the best
static, paired over steps with a bootstrap 95% interval; and adaptive's output
tokens as a share of the best static's, with a bootstrap interval over steps.
Goal: accuracy >= best static - 0.02 at <= 0.60 of its output tokens.
"""

from __future__ import annotations

import argparse
import gzip
import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np

from tidal_agents.allocation.grid import default_grid
from tidal_agents.bench.stats import rotated
from tidal_agents.chat_model import TidalChatModel
from tidal_agents.evaluation.collect import load_steps
from tidal_agents.evaluation.datasets import gsm8k
from tidal_agents.evaluation.figures import paired_difference
from tidal_agents.evaluation.step_tasks import StepTask, grade, text_steps
from tidal_agents.tool_protocol import ParsedReply
from tidal_agents.types import StrategyConfig

#: the goal: adaptive accuracy at least the best static's less this ...
ACCURACY_TOLERANCE = 0.02
#: ... at no more than this share of its output tokens
MAX_TOKEN_SHARE = 0.60


@dataclass(frozen=True)
class InvokeOutcome:
    step_id: str
    kind: str
    policy: str
    correct: bool
    output_tokens: int
    #: the configuration the step ran (adaptive: the one it chose)
    strategy: str
    predictor_kind: str | None


def training_questions() -> set[str]:
    """The questions of the shipped predictor's training rows."""
    ref = resources.files("tidal_agents").joinpath("data", "outcomes-steps.jsonl.gz")
    with ref.open("rb") as raw, gzip.open(raw, "rt") as rows:
        return {json.loads(line)["question"] for line in rows}


def held_out_steps(arith: int, gsm8k_items: int, agent: int, seed: int,
                   gsm8k_offset: int) -> list[StepTask]:
    """Steps of every kind whose question the shipped predictor never saw."""
    specs = [f"{name}:{count}" for name, count in (("arith", arith), ("agent", agent)) if count]
    steps = load_steps(specs, seed=seed) if specs else []
    if gsm8k_items:
        steps += text_steps(gsm8k(gsm8k_offset + gsm8k_items)[gsm8k_offset:])
    seen = training_questions()
    return [s for s in steps if s.question not in seen]


def policies(max_tokens: int) -> dict[str, StrategyConfig | None]:
    """``adaptive`` (None: the model decides) and every grid configuration any step
    kind can run."""
    statics = {c.name: c for c in default_grid(max_tokens) if c.strategy != "beam"}
    return {"adaptive": None, **statics}


def run_step(model: TidalChatModel, step: StepTask, policy: str) -> InvokeOutcome:
    tools = step.bound_tools()
    runnable: Any = model.bind_tools(tools, tool_choice=step.tool_choice) if tools else model
    message = runnable.invoke(list(step.messages))
    reply = ParsedReply(content=str(message.content), tool_calls=list(message.tool_calls))
    tidal = message.response_metadata.get("tidal", {})
    usage = message.usage_metadata or {}
    return InvokeOutcome(
        step_id=step.id, kind=step.kind, policy=policy, correct=grade(step, reply),
        output_tokens=int(usage.get("output_tokens", 0)),
        strategy=str(tidal.get("strategy", "")),
        predictor_kind=tidal.get("predictor_kind"),
    )


def _share_interval(a: np.ndarray, b: np.ndarray, resamples: int = 2000) -> list[float]:
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(a), size=(resamples, len(a)))
    shares = a[idx].sum(axis=1) / np.maximum(b[idx].sum(axis=1), 1)
    return [float(np.percentile(shares, 2.5)), float(np.percentile(shares, 97.5))]


def summarise(outcomes: Sequence[InvokeOutcome]) -> dict[str, Any]:
    names = list(dict.fromkeys(o.policy for o in outcomes))
    steps = list(dict.fromkeys(o.step_id for o in outcomes))
    by = {(o.policy, o.step_id): o for o in outcomes}
    per_policy: dict[str, dict[str, Any]] = {}
    for p in names:
        got = [by[p, s] for s in steps]
        per_policy[p] = {
            "accuracy": float(np.mean([o.correct for o in got])),
            "mean_output_tokens": float(np.mean([o.output_tokens for o in got])),
            "by_kind": {
                k: float(np.mean([o.correct for o in got if o.kind == k]))
                for k in sorted({o.kind for o in got})
            },
        }
    statics = [p for p in names if p != "adaptive"]
    best = min(statics, key=lambda p: (-per_policy[p]["accuracy"],
                                       per_policy[p]["mean_output_tokens"]))
    ada_correct = np.array([by["adaptive", s].correct for s in steps], dtype=float)
    best_correct = np.array([by[best, s].correct for s in steps], dtype=float)
    ada_tokens = np.array([by["adaptive", s].output_tokens for s in steps], dtype=float)
    best_tokens = np.array([by[best, s].output_tokens for s in steps], dtype=float)
    share = float(ada_tokens.sum() / max(best_tokens.sum(), 1.0))
    accuracy_ok = (per_policy["adaptive"]["accuracy"]
                   >= per_policy[best]["accuracy"] - ACCURACY_TOLERANCE)
    chosen = [by["adaptive", s] for s in steps]
    return {
        "steps": len(steps),
        "steps_by_kind": {k: sum(o.kind == k for o in chosen)
                          for k in sorted({o.kind for o in chosen})},
        "per_policy": per_policy,
        "best_static": best,
        "adaptive_minus_best_static": paired_difference(ada_correct, best_correct),
        "adaptive_token_share_of_best_static": share,
        "adaptive_token_share_of_best_static_ci95": _share_interval(ada_tokens, best_tokens),
        "adaptive_choices": {
            name: sum(o.strategy == name for o in chosen)
            for name in sorted({o.strategy for o in chosen})
        },
        "adaptive_predictor_kinds": {
            k: sum(str(o.predictor_kind) == k for o in chosen)
            for k in sorted({str(o.predictor_kind) for o in chosen})
        },
        "goal_accuracy_met": bool(accuracy_ok),
        "goal_tokens_met": share <= MAX_TOKEN_SHARE,
        "goals_met": bool(accuracy_ok and share <= MAX_TOKEN_SHARE),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`tidal-agents bench invoke`'s options."""
    parser.add_argument("--arith", type=int, default=24, help="graded arithmetic questions")
    parser.add_argument("--gsm8k", type=int, default=8, help="GSM8K questions")
    parser.add_argument("--agent", type=int, default=12,
                        help="agent tasks (a tool-call step and an answer step each)")
    parser.add_argument("--gsm8k-offset", type=int, default=40,
                        help="GSM8K items start here (the collection used the first ones)")
    parser.add_argument("--seed", type=int, default=7,
                        help="arith and agent items (the shipped collection used seed 0)")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens per sample")


def run(config: Any = None, args: Any = None) -> dict[str, Any]:
    max_tokens = int(getattr(args, "max_tokens", 64))
    seed = int(getattr(args, "seed", 7))
    steps = held_out_steps(int(getattr(args, "arith", 24)), int(getattr(args, "gsm8k", 8)),
                           int(getattr(args, "agent", 12)), seed,
                           int(getattr(args, "gsm8k_offset", 40)))
    model_name = getattr(config, "model", None)
    models = {
        name: TidalChatModel(model_name=model_name, max_tokens=max_tokens,
                             engine_config=config, strategy=strategy)
        for name, strategy in policies(max_tokens).items()
    }
    models["adaptive"].engine.start()
    names = list(models)
    outcomes = [
        run_step(models[name], step, name)
        for i, step in enumerate(steps) for name in rotated(names, i)
    ]
    figures = summarise(outcomes)
    figures.update(max_tokens=max_tokens, seed=seed, policies=names,
                   outcomes=[o.__dict__ for o in outcomes])
    return figures
