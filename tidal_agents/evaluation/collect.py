"""Collect per-(step, configuration) outcomes through the chat model's own step path.

Every step (`evaluation.step_tasks`: free-text questions, tool-call steps with
and without a distractor tool, answer steps after tool results) is rendered by
`tidal_agents.step.prepare.prepare_step` exactly as `TidalChatModel` renders it:
the same chat template, tool system prompt and reply grammar, stops, answer
kind, token room and `step_features`. The configurations are the chat model's
grid for that step (`step.decide.step_grid` over the default grid: guided steps
have no beam).

What runs for each step (the paper's recipe; see docs/design-notes.md, 'Soft
labels from one sampling request'):

* one sampling request with ``n = n_max`` at the grid's temperature (sampled
  token log-probs) and one greedy request. Every best-of-N configuration is
  *bootstrapped* from those samples: `resamples` subsets of N samples drawn
  without replacement (what a real N-sample request returns), each finished
  as the chat model finishes a step: the strategy's selector over the complete
  samples (`selection.voting.select`, the step's answer kind), the complete
  reply preferred under a grammar, the reply parsed against the bound tools,
  the loop guard's answer-only decode when the reply repeats an answered call,
  the greedy fallback when nothing usable is left. The subset is graded
  (`step_tasks.grade`); the soft label is the mean over subsets.
* beam configurations run for real (`strategies.run_strategy`), one step at a
  time, their own measured tokens and wall time recorded.

Generated tokens are exact (the subset's samples plus any follow-up decode).
Latency of a bootstrapped subset is modelled from real requests sent alone
before the main run (``--latency-items`` steps of each kind at n in {1, 2, 4,
8, n_max} and greedy): ``wall = a + p * prompt + L * (b + c * n + g * guided)``
(L: the longest sample's tokens) fitted by median regression (robust to a
shared machine). The main run sends several steps at once for throughput, so
its wall times are not latencies. Rows say which latency is measured and which
modelled (``latency_source``).

Output: JSONL(.gz), one row per (step, configuration) with the step's
features, written a whole step at a time, so a killed run resumes where it
stopped. Latency measurements go to ``<out>.latency.jsonl``; each step's
samples (texts, tokens, log-probs) to ``<out>.samples.jsonl``.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tidal_agents import tool_protocol as tp
from tidal_agents.engine import EngineConfig, GenerationRequest, get_engine
from tidal_agents.errors import TidalConfigError
from tidal_agents.evaluation.datasets import load_task
from tidal_agents.evaluation.step_tasks import (
    StepTask,
    agent_steps,
    file_steps,
    grade,
    text_steps,
)
from tidal_agents.step.decide import AllocationSettings, step_grid
from tidal_agents.step.finish import prefer_complete, repeats_answered_call
from tidal_agents.step.pipeline import has_usable_output
from tidal_agents.step.prepare import PreparedStep, parse_call_options, prepare_step, step_features
from tidal_agents.strategies import run_strategy
from tidal_agents.strategies._common import to_candidate
from tidal_agents.strategies.base import StepInput
from tidal_agents.types import Candidate, CostRecord, StrategyConfig, StrategyResult

DEFAULT_RESAMPLES = 30
LATENCY_NS = (1, 2, 4, 8)
#: task sources `--task` takes, with the default count of each
SOURCES: dict[str, int] = {"arith": 200, "gsm8k": 40, "math500": 40, "agent": 100}


# ----------------------------------------------------------------- records
@dataclass(frozen=True)
class OutcomeRow:
    """The measured or bootstrapped outcome of one configuration on one step."""

    query_id: str
    task: str
    difficulty: str
    #: the step kind: text, tool_call or tool_answer
    kind: str
    question: str
    gold: str
    prompt_tokens: int
    config: str
    strategy: str
    n: int
    selector: str
    temperature: float
    max_tokens: int
    #: expected correctness in [0, 1]
    soft_label: float
    #: prompt + generated tokens (mean over bootstrap subsets when bootstrapped)
    tokens: float
    #: generated tokens, follow-up decodes (loop guard, fallback) included
    generated_tokens: float
    latency_s: float
    #: 'measured' (this step, run alone) or 'model' (latency model, see module doc)
    latency_source: str
    bootstrapped: bool
    seed: int
    backend: str
    #: `StepFeatures.to_dict()` of the step as the chat model computes them
    features: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LatencyMeasurement:
    query_id: str
    n: int
    temperature: float
    wall_s: float
    longest_tokens: int
    generated_tokens: int
    prompt_tokens: int
    guided: bool = False


# --------------------------------------------------------- latency model
@dataclass(frozen=True)
class LatencyModel:
    """``wall = a + p * prompt + L * (b + c * n + g * guided)`` for n samples whose
    longest has L tokens.

    Decode runs one step per token of the longest sample; each step costs a
    fixed part (b), a part growing with the batch (c per sequence) and, under a
    grammar, the grammar's mask (g); a and p cover the request and its prefill.
    Fitted by median (least absolute deviation) regression: on a shared machine a
    request that ran beside someone else's engine takes several times longer; a
    median fit ignores those.
    """

    a: float
    b: float
    c: float
    p: float = 0.0
    g: float = 0.0

    @classmethod
    def fit(cls, measurements: Sequence[LatencyMeasurement]) -> LatencyModel:
        if len(measurements) < 3:
            raise TidalConfigError(
                f"{len(measurements)} latency measurements; at least 3 are needed to fit."
            )
        from sklearn.linear_model import QuantileRegressor

        x = np.array([[m.longest_tokens, m.longest_tokens * m.n, m.prompt_tokens,
                       m.longest_tokens * m.guided] for m in measurements], float)
        y = np.array([m.wall_s for m in measurements], float)
        used = [j for j in range(x.shape[1]) if np.ptp(x[:, j]) > 0]
        q = QuantileRegressor(quantile=0.5, alpha=0.0, solver="highs").fit(x[:, used], y)
        coef = np.zeros(x.shape[1])
        coef[used] = q.coef_
        b, c, p, g = (max(float(v), 0.0) for v in coef)
        return cls(max(float(q.intercept_), 0.0), b, c, p, g)

    @property
    def coefficients(self) -> dict[str, float]:
        return {"a_s": self.a, "b_s_per_token": self.b, "c_s_per_token_per_seq": self.c,
                "p_s_per_prompt_token": self.p, "g_s_per_guided_token": self.g}

    def predict(self, n: int, longest_tokens: float, prompt_tokens: int = 0,
                guided: bool = False) -> float:
        per_token = self.b + self.c * n + self.g * float(guided)
        return max(self.a + self.p * prompt_tokens + float(longest_tokens) * per_token, 1e-3)


# ------------------------------------------------------------ settings
@dataclass(frozen=True)
class CollectSettings:
    n_max: int = 16
    max_tokens: int = 64
    resamples: int = DEFAULT_RESAMPLES
    seed: int = 0
    concurrency: int = 4
    #: steps of each kind measured alone for the latency model
    latency_items: int = 3
    #: run the grid's beam configurations on text steps
    beams: bool = True

    def __post_init__(self) -> None:
        if self.n_max < 2 or self.n_max & (self.n_max - 1):
            raise TidalConfigError(f"n_max={self.n_max}: allowed is a power of two >= 2.")
        for name in ("max_tokens", "resamples", "concurrency"):
            if getattr(self, name) < 1:
                raise TidalConfigError(f"{name}={getattr(self, name)}: allowed is >= 1.")
        if self.latency_items < 0:
            raise TidalConfigError(f"latency_items={self.latency_items}: allowed is >= 0.")


def step_configs(prepared: PreparedStep, settings: CollectSettings) -> list[StrategyConfig]:
    """The chat model's default grid for this step, as it would decide over it (no beam
    under a grammar), without configurations the samples cannot serve (N > n_max) and
    without beam when `settings.beams` is off."""
    grid = step_grid(AllocationSettings(), prepared.max_tokens, prepared.guided is not None)
    return [c for c in grid
            if (c.strategy != "beam" or settings.beams)
            and (c.strategy != "best_of_n" or c.n <= settings.n_max)]


# ------------------------------------------------------- finishing a step
@dataclass(frozen=True)
class FollowUps:
    """The greedy decodes the chat model may add after a strategy's reply."""

    #: the step's greedy reply (also the fallback when a reply is unusable)
    greedy: Candidate
    #: the loop guard's answer-only greedy reply (steps after a tool result)
    guard: Candidate | None = None


@dataclass(frozen=True)
class Finished:
    correct: bool
    #: generated tokens of the follow-up decodes the reply needed
    extra_tokens: tuple[int, ...] = ()


def finish_reply(
    task: StepTask, prepared: PreparedStep, result: StrategyResult, follow: FollowUps,
    fallback: bool = True,
) -> Finished:
    """Grade `result` as the chat model finishes a step (step.pipeline): complete reply
    preferred under a grammar, parsed against the bound tools, the loop guard, and the
    greedy fallback when nothing usable is left (`fallback`)."""
    if prepared.guided is not None:
        result = prefer_complete(result)
    parsed = tp.parse_reply(result.selected.text, prepared.tool_grammar,
                            tools=prepared.callable_specs)
    extra: list[int] = []
    if (prepared.options.choice.mode == "auto" and parsed.tool_calls
            and repeats_answered_call(parsed.tool_calls, prepared.messages)
            and follow.guard is not None):
        parsed = tp.parse_reply(follow.guard.text, True,
                                tools=list(prepared.options.specs) or None)
        extra.append(len(follow.guard.token_ids))
    if fallback and not has_usable_output(parsed):
        greedy = single_result(follow.greedy, result.config)
        rescued = finish_reply(task, prepared, greedy, follow, fallback=False)
        return Finished(rescued.correct,
                        (*extra, len(follow.greedy.token_ids), *rescued.extra_tokens))
    return Finished(grade(task, parsed), tuple(extra))


def single_result(candidate: Candidate, config: StrategyConfig) -> StrategyResult:
    return StrategyResult(selected=candidate, candidates=(candidate,), cost=CostRecord(),
                          config=config)


def best_of_n_result(
    subset: Sequence[Candidate], config: StrategyConfig, answer_kind: Any
) -> StrategyResult:
    """What `strategies.best_of_n` selects among `subset` (complete samples vote)."""
    from tidal_agents.selection.voting import select

    complete = [c for c in subset if c.finish_reason in ("stop", "length")]
    pool = complete or list(subset)
    chosen = select(pool, config.selector, answer_kind)
    return StrategyResult(selected=pool[chosen.index], candidates=tuple(subset),
                          cost=CostRecord(), config=config)


@dataclass(frozen=True)
class StepSamples:
    """One step's generations: the n_max samples, the greedy reply, the guard's reply."""

    task: StepTask
    prepared: PreparedStep
    samples: tuple[Candidate, ...]
    follow: FollowUps


def rows_from_samples(
    got: StepSamples, settings: CollectSettings, latency: LatencyModel, rng: random.Random,
    backend: str,
) -> list[OutcomeRow]:
    """The greedy and best-of-N rows of one step, bootstrapped from its samples.

    Deterministic given `rng`'s state."""
    task, prepared = got.task, got.prepared
    p_tok, guided = prepared.prompt_tokens, prepared.guided is not None
    features = step_features(prepared, task.step_index, 0)
    base = _row_base(task, prepared, settings, backend, features.to_dict())

    def extra_latency(extra: Sequence[int]) -> float:
        return sum(latency.predict(1, t, p_tok, guided) for t in extra)

    rows: list[OutcomeRow] = []
    for config in step_configs(prepared, settings):
        if config.strategy == "single":
            done = finish_reply(task, prepared, single_result(got.follow.greedy, config),
                                got.follow, fallback=False)
            gen = len(got.follow.greedy.token_ids) + sum(done.extra_tokens)
            rows.append(OutcomeRow(
                **base, **_config_fields(config), soft_label=float(done.correct),
                tokens=float(p_tok + gen), generated_tokens=float(gen),
                latency_s=latency.predict(1, len(got.follow.greedy.token_ids), p_tok, guided)
                + extra_latency(done.extra_tokens),
                latency_source="model", bootstrapped=False))
            continue
        if config.strategy != "best_of_n":
            continue
        reps = 1 if config.n == len(got.samples) else settings.resamples
        labels: list[float] = []
        gens: list[int] = []
        lats: list[float] = []
        for _ in range(reps):
            subset = rng.sample(list(got.samples), config.n)
            done = finish_reply(task, prepared,
                                best_of_n_result(subset, config, prepared.answer_kind),
                                got.follow)
            longest = max(len(c.token_ids) for c in subset)
            labels.append(float(done.correct))
            gens.append(sum(len(c.token_ids) for c in subset) + sum(done.extra_tokens))
            lats.append(latency.predict(config.n, longest, p_tok, guided)
                        + extra_latency(done.extra_tokens))
        mean_gen = float(np.mean(gens))
        rows.append(OutcomeRow(
            **base, **_config_fields(config), soft_label=float(np.mean(labels)),
            tokens=p_tok + mean_gen, generated_tokens=mean_gen, latency_s=float(np.mean(lats)),
            latency_source="model", bootstrapped=config.n < len(got.samples)))
    return rows


def _row_base(task: StepTask, prepared: PreparedStep, settings: CollectSettings, backend: str,
              features: dict[str, Any]) -> dict[str, Any]:
    return dict(query_id=task.id, task=task.source, difficulty=task.difficulty, kind=task.kind,
                question=task.question, gold=task.gold, prompt_tokens=prepared.prompt_tokens,
                seed=settings.seed, backend=backend, features=features)


def _config_fields(config: StrategyConfig) -> dict[str, Any]:
    return dict(config=config.name, strategy=config.strategy, n=config.n,
                selector="beam" if config.strategy == "beam" else config.selector,
                temperature=config.temperature, max_tokens=config.max_tokens)


# ------------------------------------------------------------- the engine
def prepare(engine: Any, task: StepTask, settings: CollectSettings) -> PreparedStep:
    """The step as the chat model prepares it (its tools bound, the step's tool_choice)."""
    tools = task.bound_tools()
    kwargs: dict[str, Any] = {"tools": tools} if tools else {}
    if tools and task.tool_choice is not None:
        kwargs["tool_choice"] = task.tool_choice
    options = parse_call_options(kwargs)
    return prepare_step(engine, task.messages, options, (), settings.max_tokens)


def _request(prepared: PreparedStep, n: int, temperature: float,
             step: StepInput | None = None) -> GenerationRequest:
    step = step or prepared.step_input()
    return GenerationRequest(prompt=step.prompt, n=n, temperature=temperature,
                             max_tokens=prepared.max_tokens, stop=step.stop, logprobs=0,
                             guided=step.guided)


def _guard_input(prepared: PreparedStep) -> StepInput:
    """The loop guard's answer-only request (step.pipeline)."""
    return StepInput(prompt=prepared.prompt, guided=tp.answer_grammar(), stop=prepared.stops)


def sampling_temperature(prepared: PreparedStep, settings: CollectSettings) -> float:
    return next(c.temperature for c in step_configs(prepared, settings)
                if c.strategy == "best_of_n")


async def generate_step(engine: Any, task: StepTask, settings: CollectSettings) -> StepSamples:
    """The n_max samples, the greedy reply and (after a tool result) the guard's reply."""
    prepared = prepare(engine, task, settings)
    step = prepared.step_input()
    requests = [
        _request(prepared, settings.n_max, sampling_temperature(prepared, settings)),
        _request(prepared, 1, 0.0),
    ]
    if task.kind == "tool_answer":
        requests.append(_request(prepared, 1, 0.0, _guard_input(prepared)))
    results = await asyncio.gather(*(engine.generate(r) for r in requests))
    samples = tuple(to_candidate(s, step) for s in results[0].samples)
    greedy = to_candidate(results[1].samples[0], step)
    guard = to_candidate(results[2].samples[0], step) if len(results) > 2 else None
    return StepSamples(task, prepared, samples, FollowUps(greedy, guard))


async def beam_rows(
    engine: Any, task: StepTask, settings: CollectSettings, latency: LatencyModel,
    follow: FollowUps, backend: str,
) -> list[OutcomeRow]:
    """Beam configurations run for real (alone, so their wall time is a latency)."""
    prepared = prepare(engine, task, settings)
    features = step_features(prepared, task.step_index, 0).to_dict()
    base = _row_base(task, prepared, settings, backend, features)
    rows = []
    for config in step_configs(prepared, settings):
        if config.strategy != "beam":
            continue
        res = await run_strategy(engine, prepared.step_input(), config)
        done = finish_reply(task, prepared, res, follow)
        extra = sum(done.extra_tokens)
        rows.append(OutcomeRow(
            **base, **_config_fields(config), soft_label=float(done.correct),
            tokens=float(res.cost.prompt_tokens + res.cost.generated_tokens + extra),
            generated_tokens=float(res.cost.generated_tokens + extra),
            latency_s=res.cost.wall_s + sum(latency.predict(1, t, prepared.prompt_tokens)
                                            for t in done.extra_tokens),
            latency_source="measured", bootstrapped=False,
            extra={"engine_calls": res.cost.engine_calls}))
    return rows


async def measure_latency(
    engine: Any, tasks: Sequence[StepTask], settings: CollectSettings, show: bool = True
) -> list[LatencyMeasurement]:
    """Real requests, one at a time: `latency_items` steps of each kind, n in {1, 2, 4, 8,
    n_max} at the sampling temperature, and greedy."""
    from tqdm import tqdm

    picked: list[StepTask] = []
    for kind in ("text", "tool_call", "tool_answer"):
        picked += [t for t in tasks if t.kind == kind][: settings.latency_items]
    ns = sorted({*[n for n in LATENCY_NS if n <= settings.n_max], settings.n_max})
    plan = [(t, n, True) for t in picked for n in ns] + [(t, 1, False) for t in picked]
    out = []
    if picked:  # the first request pays one-off costs that are not latency
        await engine.generate(_request(prepare(engine, picked[0], settings), 2, 0.7))
    for task, n, sampled in tqdm(plan, desc="latency", disable=not show, file=sys.stderr):
        prepared = prepare(engine, task, settings)
        temperature = sampling_temperature(prepared, settings) if sampled else 0.0
        r = await engine.generate(_request(prepared, n, temperature))
        out.append(LatencyMeasurement(
            query_id=task.id, n=n, temperature=temperature, wall_s=r.wall_s,
            longest_tokens=max(len(s.token_ids) for s in r.samples),
            generated_tokens=r.generated_tokens, prompt_tokens=r.prompt_tokens,
            guided=prepared.guided is not None))
    return out


# ------------------------------------------------------------------ files
def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSONL (optionally .gz) file; [] when it does not exist."""
    if not path.exists():
        return []
    opener: Any = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def completed_queries(rows: Sequence[dict[str, Any]], names: Sequence[str]) -> set[str]:
    """Query ids with a row for every configuration in `names`."""
    have: dict[str, set[str]] = {}
    for r in rows:
        have.setdefault(r["query_id"], set()).add(r["config"])
    need = set(names)
    return {q for q, got in have.items() if need <= got}


def _append(path: Path, records: Sequence[Any]) -> None:
    opener: Any = gzip.open if path.suffix == ".gz" else open
    with opener(path, "at", encoding="utf-8") as fh:
        for rec in records:
            obj = asdict(rec) if hasattr(rec, "__dataclass_fields__") else rec
            fh.write(json.dumps(obj, sort_keys=True) + "\n")


def side_file(out: Path, kind: str) -> Path:
    """``<out>.<kind>.jsonl`` (``.gz`` when `out` is gzipped)."""
    gz = out.suffix == ".gz"
    stem = out.name.removesuffix(".gz").removesuffix(".jsonl")
    return out.with_name(f"{stem}.{kind}.jsonl" + (".gz" if gz else ""))


def _sample_record(got: StepSamples) -> dict[str, Any]:
    def brief(c: Candidate) -> dict[str, Any]:
        return {"text": c.text, "tokens": len(c.token_ids), "finish": c.finish_reason,
                "mean_logprob": c.mean_logprob}

    return {"query_id": got.task.id, "kind": got.task.kind,
            "prompt_tokens": got.prepared.prompt_tokens,
            "samples": [brief(c) for c in got.samples], "greedy": brief(got.follow.greedy),
            "guard": brief(got.follow.guard) if got.follow.guard else None}


def _complete(existing: Sequence[dict[str, Any]]) -> set[str]:
    """Steps already collected (a step's rows are written together)."""
    return {r["query_id"] for r in existing}


async def collect(
    engine: Any, tasks: Sequence[StepTask], out: Path, settings: CollectSettings,
    show: bool = True,
) -> dict[str, Any]:
    """Collect outcomes for `tasks` into `out` (resuming). Returns a summary."""
    from tqdm import tqdm

    out.parent.mkdir(parents=True, exist_ok=True)
    done = _complete(read_rows(out))
    lat_path = side_file(out, "latency")
    measurements = [LatencyMeasurement(**m) for m in read_rows(lat_path)]
    if not measurements and settings.latency_items:
        measurements = await measure_latency(engine, tasks, settings, show)
        _append(lat_path, measurements)
    if not measurements:
        raise TidalConfigError("no latency measurements: pass latency_items >= 1.")
    latency = LatencyModel.fit(measurements)
    backend = getattr(engine, "backend_id", "unknown")
    todo = [t for t in tasks if t.id not in done]
    t0 = time.perf_counter()
    bar = tqdm(total=len(tasks), initial=len(tasks) - len(todo), desc="collect",
               disable=not show, file=sys.stderr)
    for start in range(0, len(todo), settings.concurrency):
        batch = todo[start : start + settings.concurrency]
        generated = await asyncio.gather(*(generate_step(engine, t, settings) for t in batch))
        for got in generated:
            # one rng per step, from the seed and the step id: resumable and order-free
            rng = random.Random(f"{settings.seed}:{got.task.id}")
            rows = await asyncio.to_thread(rows_from_samples, got, settings, latency, rng,
                                           backend)
            rows += await beam_rows(engine, got.task, settings, latency, got.follow, backend)
            _append(out, rows)
            _append(side_file(out, "samples"), [_sample_record(got)])
            bar.update(1)
    bar.close()
    return {"steps": len(tasks), "skipped": len(tasks) - len(todo), "collected": len(todo),
            "wall_s": time.perf_counter() - t0, "out": str(out),
            "latency_model": latency.coefficients}


# ------------------------------------------------------------------- tasks
def parse_task_spec(spec: str) -> tuple[str, int]:
    """``NAME`` or ``NAME:COUNT`` (NAME one of `SOURCES`)."""
    name, _, count = spec.partition(":")
    if name not in SOURCES:
        raise TidalConfigError(f"--task {spec!r}: allowed names are {', '.join(SOURCES)} "
                               "(optionally NAME:COUNT).")
    if not count:
        return name, SOURCES[name]
    if not count.isdigit() or int(count) < 1:
        raise TidalConfigError(f"--task {spec!r}: COUNT must be an integer >= 1.")
    return name, int(count)


def load_steps(specs: Sequence[str], seed: int = 0) -> list[StepTask]:
    """The steps of every ``NAME[:COUNT]`` spec (agent: COUNT tasks, four steps each),
    the sources interleaved so that a partial run holds every kind."""
    sources: list[list[StepTask]] = []
    for spec in specs:
        name, count = parse_task_spec(spec)
        if name == "agent":
            sources.append(agent_steps(count, seed=seed))
        else:
            sources.append(text_steps(load_task(name, count, seed=seed)))
    # each source spread evenly over the run: ordered by position within its source
    order = [(i / len(src), k, i) for k, src in enumerate(sources) for i in range(len(src))]
    steps = [sources[k][i] for _, k, i in sorted(order)]
    ids = [s.id for s in steps]
    if len(set(ids)) != len(ids):
        raise TidalConfigError("--task specs repeat steps; name each source once.")
    return steps


def add_arguments(p: argparse.ArgumentParser) -> None:
    """`tidal-agents collect`'s options."""
    defaults = ", ".join(f"{k} (default {v})" for k, v in SOURCES.items())
    p.add_argument("--task", nargs="+", default=None, metavar="NAME[:COUNT]",
                   help=f"step sources: {defaults}; agent COUNT tasks give a tool-call and "
                   "an answer step each, under tool_choice auto and as ToolFirstMiddleware asks "
                   "(default: arith, unless --tasks is given)")
    p.add_argument("--tasks", type=Path, default=None, metavar="FILE.jsonl",
                   help="your own steps: one JSON object per line with 'prompt' or 'messages', "
                   "'gold', optional 'tools' and 'tool_choice' "
                   "(see evaluation.step_tasks.file_steps)")
    p.add_argument("--out", type=Path, required=True,
                   help="JSONL(.gz) output (appended, resumable)")
    p.add_argument("--seed", type=int, default=0, help="arith/agent items and bootstrap subsets")
    p.add_argument("--n-max", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--resamples", type=int, default=DEFAULT_RESAMPLES)
    p.add_argument("--concurrency", type=int, default=4, help="steps in flight at once")
    p.add_argument("--latency-items", type=int, default=3,
                   help="steps of each kind measured alone at n=1,2,4,8,n_max for the latency "
                   "model")
    p.add_argument("--no-beam", action="store_true",
                   help="skip the grid's beam configurations on text steps")
    p.add_argument("--model", default=None, help="HF model folder (default: embedded)")


def run(args: argparse.Namespace) -> int:
    """`tidal-agents collect` with parsed options: see the module docstring."""
    settings = CollectSettings(
        n_max=args.n_max, max_tokens=args.max_tokens, resamples=args.resamples, seed=args.seed,
        concurrency=args.concurrency, latency_items=args.latency_items, beams=not args.no_beam,
    )
    steps = load_steps(args.task or ([] if args.tasks else ["arith"]), seed=args.seed)
    if args.tasks is not None:
        steps += file_steps(args.tasks)
    engine = get_engine(EngineConfig(model=args.model))
    summary = asyncio.run(collect(engine, steps, args.out, settings))
    print(json.dumps(summary, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    """`tidal-agents collect`: see the module docstring."""
    p = argparse.ArgumentParser(prog="tidal-agents collect", description=__doc__.splitlines()[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
