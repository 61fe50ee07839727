"""Collect per-(query, configuration) outcomes: soft labels, tokens, latency.

What runs for each query (the paper's recipe; see docs/design-notes.md, 'Soft
labels from one sampling request'):

* one sampling request with ``n = n_max`` (temperature 0.7, sampled-token
  log-probs). Every best-of-N configuration with N <= n_max is then
  *bootstrapped* from those samples: 30 random subsets of N samples (drawn
  without replacement, so each subset is what a real N-sample request would
  return), majority or confidence-weighted vote, correctness of the selected
  answer averaged over the subsets -> a soft label in [0, 1]. Ties are split:
  a tie between k answers scores the fraction of them that is correct (the
  expectation of a random tie-break). ``single`` (one sample at temperature
  0.7) is the exact fraction of correct samples.
* one greedy request (``greedy``: temperature 0, n = 1), run separately.
* beam configurations (``--beam-widths``) run for real through
  ``tidal_agents.strategies.run_strategy``, one query at a time, their own
  measured tokens and wall time recorded.

Tokens of a bootstrapped configuration are exact: the prompt once (the n
samples share it) plus the generated tokens of the samples in the subset.

Latency of a bootstrapped configuration is *modelled from real measurements*:
before the main run, ``--latency-items`` queries are sent alone (no other
request of ours in flight) as real requests with n in {1, 2, 4, 8, n_max};
the model ``wall = a + L * (b + c * n)`` (L: the longest sample's tokens;
decode is sequential in the longest sample and each step costs more with a
bigger batch) is fitted to them by median regression (robust to requests
slowed by other processes on a shared machine), and each bootstrapped
subset's latency is predicted from its own longest sample. The main run
sends several queries at once for throughput, so its wall times are not
per-query latencies and are not used as such.
Rows say which latency is measured and which is modelled
(``latency_source``).

Output: JSONL, one row per (query, configuration), written a whole query at
a time, so a killed run resumes where it stopped (queries already present
are skipped). Latency measurements go to ``<out>.latency.jsonl``; the raw
per-sample answers to ``<out>.samples.jsonl`` (for re-analysis).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from tidal_agents.engine import EngineConfig, GenerationRequest, get_engine
from tidal_agents.errors import TidalConfigError
from tidal_agents.evaluation.datasets import TASKS, load_task
from tidal_agents.evaluation.tasks import TaskItem
from tidal_agents.selection.answers import answers_equal, canonical_answer, extract_answer
from tidal_agents.strategies import run_strategy
from tidal_agents.strategies.base import StepInput
from tidal_agents.types import StrategyConfig

Selector = Literal["majority", "confidence"]
SAMPLING_TEMPERATURE = 0.7
DEFAULT_RESAMPLES = 30
LATENCY_NS = (1, 2, 4, 8)


# ----------------------------------------------------------------- records
@dataclass(frozen=True)
class SampleOutcome:
    """One sample of the n_max request, reduced to what the bootstrap needs."""

    answer_key: str | None
    correct: bool
    generated_tokens: int
    mean_logprob: float | None
    finish_reason: str


@dataclass(frozen=True)
class OutcomeRow:
    """The measured or bootstrapped outcome of one configuration on one query."""

    query_id: str
    task: str
    difficulty: str
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
    generated_tokens: float
    latency_s: float
    #: 'measured' (this query, run alone) or 'model' (latency model, see module doc)
    latency_source: str
    bootstrapped: bool
    seed: int
    backend: str
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


# ------------------------------------------------------------ bootstrap
def _check_selector(selector: str) -> None:
    if selector not in ("majority", "confidence"):
        raise TidalConfigError(f"selector={selector!r}: allowed are majority, confidence.")


def vote_expected_correct(
    samples: Sequence[SampleOutcome], selector: Selector
) -> float:
    """Expected correctness of the vote over `samples` (ties split evenly).

    majority: one vote per sample. confidence: each sample's vote weighs
    exp(mean token log-prob) (its geometric-mean token probability).
    Samples without an answer do not vote; if none has one, the result is 0.
    """
    _check_selector(selector)
    weight: dict[str, float] = {}
    correct: dict[str, list[bool]] = {}
    for s in samples:
        if s.answer_key is None:
            continue
        if selector == "majority":
            w = 1.0
        else:
            lp = s.mean_logprob
            w = math.exp(lp) if lp is not None and math.isfinite(lp) else 0.0
        weight[s.answer_key] = weight.get(s.answer_key, 0.0) + w
        correct.setdefault(s.answer_key, []).append(s.correct)
    if not weight:
        return 0.0
    best = max(weight.values())
    leaders = [k for k, w in weight.items() if math.isclose(w, best, rel_tol=1e-9, abs_tol=1e-12)]
    return float(np.mean([np.mean(correct[k]) for k in leaders]))


@dataclass(frozen=True)
class BootstrapOutcome:
    soft_label: float
    generated_tokens: float
    #: per subset: the longest sample's token count (drives decode latency)
    longest_tokens: tuple[int, ...]


def bootstrap(
    samples: Sequence[SampleOutcome],
    n: int,
    selector: Selector,
    resamples: int,
    rng: random.Random,
) -> BootstrapOutcome:
    """Soft label of an n-sample vote from `resamples` subsets of `samples`.

    With n == len(samples) the one possible subset is used once.
    """
    _check_selector(selector)
    if not 1 <= n <= len(samples):
        raise TidalConfigError(f"n={n}: allowed is 1..{len(samples)} (the samples collected).")
    if resamples < 1:
        raise TidalConfigError(f"resamples={resamples}: allowed is an integer >= 1.")
    reps = 1 if n == len(samples) else resamples
    labels, gen, longest = [], [], []
    for _ in range(reps):
        subset = rng.sample(list(samples), n)
        labels.append(vote_expected_correct(subset, selector))
        gen.append(sum(s.generated_tokens for s in subset))
        longest.append(max(s.generated_tokens for s in subset))
    return BootstrapOutcome(float(np.mean(labels)), float(np.mean(gen)), tuple(longest))


# --------------------------------------------------------- latency model
@dataclass(frozen=True)
class LatencyModel:
    """``wall = a + L * (b + c * n)`` for n samples whose longest has L tokens.

    Decode runs one step per token of the longest sample; each step costs a
    fixed part (b: weights, scheduling) plus a part growing with the batch
    (c per sequence); a covers prefill and request overhead. Fitted by median
    (least absolute deviation) regression on all measurements together: the
    machine is shared, and a request that ran beside someone else's engine
    takes several times longer; a median fit ignores those, a least-squares
    or per-n fit follows them (seen here: n=1 fitted slower than n=4).
    """

    a: float
    b: float
    c: float

    @classmethod
    def fit(cls, measurements: Sequence[LatencyMeasurement]) -> LatencyModel:
        if len(measurements) < 3:
            raise TidalConfigError(
                f"{len(measurements)} latency measurements; at least 3 are needed to fit."
            )
        from sklearn.linear_model import QuantileRegressor

        x = np.array([[m.longest_tokens, m.longest_tokens * m.n] for m in measurements], float)
        y = np.array([m.wall_s for m in measurements], float)
        q = QuantileRegressor(quantile=0.5, alpha=0.0, solver="highs").fit(x, y)
        a, b, c = float(q.intercept_), float(q.coef_[0]), float(q.coef_[1])
        return cls(max(a, 0.0), max(b, 0.0), max(c, 0.0))

    @property
    def coefficients(self) -> dict[str, float]:
        return {"a_s": self.a, "b_s_per_token": self.b, "c_s_per_token_per_seq": self.c}

    def predict(self, n: int, longest_tokens: float) -> float:
        return max(self.a + float(longest_tokens) * (self.b + self.c * n), 1e-3)


# ------------------------------------------------------------ the grid
@dataclass(frozen=True)
class CollectSettings:
    n_max: int = 16
    max_tokens: int = 96
    resamples: int = DEFAULT_RESAMPLES
    seed: int = 0
    concurrency: int = 4
    latency_items: int = 8
    beam_widths: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.n_max < 2 or self.n_max & (self.n_max - 1):
            raise TidalConfigError(f"n_max={self.n_max}: allowed is a power of two >= 2.")
        for name in ("max_tokens", "resamples", "concurrency"):
            if getattr(self, name) < 1:
                raise TidalConfigError(f"{name}={getattr(self, name)}: allowed is >= 1.")
        if self.latency_items < 0:
            raise TidalConfigError(f"latency_items={self.latency_items}: allowed is >= 0.")
        if any(w < 2 for w in self.beam_widths):
            raise TidalConfigError(f"beam_widths={self.beam_widths}: widths must be >= 2.")

    @property
    def sample_ns(self) -> list[int]:
        """2, 4, ..., n_max."""
        return [2**k for k in range(1, int(math.log2(self.n_max)) + 1)]


def grid_names(settings: CollectSettings) -> list[str]:
    """Every configuration name a complete query has rows for."""
    names = ["greedy", "single"]
    for n in settings.sample_ns:
        names += [f"bo{n}-majority", f"bo{n}-confidence"]
    names += [f"beam{w}" for w in settings.beam_widths]
    return names


# ------------------------------------------------------------- the engine
def _sample_outcomes(result: Any, gold: str, kind: str = "math") -> list[SampleOutcome]:
    out = []
    verdicts: dict[str, bool] = {}
    for s in result.samples:
        answer = extract_answer(s.text, kind)  # type: ignore[arg-type]
        key = canonical_answer(s.text, kind) if answer is not None else None  # type: ignore[arg-type]
        if answer is None:
            ok = False
        else:
            if answer not in verdicts:
                verdicts[answer] = answers_equal(answer, gold)
            ok = verdicts[answer]
        out.append(
            SampleOutcome(
                answer_key=key,
                correct=ok,
                generated_tokens=len(s.token_ids),
                mean_logprob=s.mean_logprob,
                finish_reason=s.finish_reason,
            )
        )
    return out


async def measure_latency(
    engine: Any, items: Sequence[TaskItem], settings: CollectSettings, show: bool = True
) -> list[LatencyMeasurement]:
    """Real requests, one at a time, n in {1, 2, 4, 8, n_max} plus greedy."""
    from tqdm import tqdm

    ns = sorted({*[n for n in LATENCY_NS if n <= settings.n_max], settings.n_max})
    plan = [(item, n, SAMPLING_TEMPERATURE) for item in items for n in ns]
    plan += [(item, 1, 0.0) for item in items]
    out = []
    # a warm-up request: the first one pays one-off costs that are not latency
    if items:
        prompt = engine.apply_chat_template(items[0].messages())
        await engine.generate(GenerationRequest(prompt=prompt, n=2, max_tokens=8,
                                                temperature=SAMPLING_TEMPERATURE))
    for item, n, temp in tqdm(plan, desc="latency", disable=not show, file=sys.stderr):
        prompt = engine.apply_chat_template(item.messages())
        r = await engine.generate(
            GenerationRequest(prompt=prompt, n=n, temperature=temp,
                              max_tokens=settings.max_tokens)
        )
        out.append(
            LatencyMeasurement(
                query_id=item.id, n=n, temperature=temp, wall_s=r.wall_s,
                longest_tokens=max(len(s.token_ids) for s in r.samples),
                generated_tokens=r.generated_tokens, prompt_tokens=r.prompt_tokens,
            )
        )
    return out


async def collect_item(
    engine: Any,
    item: TaskItem,
    settings: CollectSettings,
    latency: LatencyModel,
    rng: random.Random,
) -> tuple[list[OutcomeRow], dict[str, Any]]:
    """All sampling-based rows of one query (n_max request + greedy request)."""

    prompt = engine.apply_chat_template(item.messages())
    sampled, greedy = await asyncio.gather(
        engine.generate(
            GenerationRequest(prompt=prompt, n=settings.n_max, temperature=SAMPLING_TEMPERATURE,
                              max_tokens=settings.max_tokens, logprobs=0)
        ),
        engine.generate(
            GenerationRequest(prompt=prompt, n=1, temperature=0.0,
                              max_tokens=settings.max_tokens)
        ),
    )
    samples = await asyncio.to_thread(_sample_outcomes, sampled, item.gold)
    (g,) = await asyncio.to_thread(_sample_outcomes, greedy, item.gold)
    rows = rows_from_samples(
        item, samples, g, sampled.prompt_tokens, settings, latency, rng,
        backend=getattr(engine, "backend_id", "unknown"),
        n_max_wall_s=sampled.wall_s,
    )
    record = {
        "query_id": item.id,
        "prompt_tokens": sampled.prompt_tokens,
        "backend": getattr(engine, "backend_id", "unknown"),
        "greedy": asdict(g),
        "samples": [asdict(s) for s in samples],
        "greedy_text_head": greedy.samples[0].text[:200],
        "sample_texts_head": [s.text[:160] for s in sampled.samples[:2]],
    }
    return rows, record


def rows_from_samples(
    item: TaskItem,
    samples: Sequence[SampleOutcome],
    greedy: SampleOutcome,
    prompt_tokens: int,
    settings: CollectSettings,
    latency: LatencyModel,
    rng: random.Random,
    backend: str,
    n_max_wall_s: float | None = None,
) -> list[OutcomeRow]:
    """The greedy, single and best-of-N rows of one query from its samples.

    Deterministic given `rng`'s state: `rebuild` re-derives the same rows
    (e.g. after refitting the latency model) from the samples file.
    """
    if len(samples) != settings.n_max:
        raise TidalConfigError(f"{item.id}: {len(samples)} samples, expected {settings.n_max}.")
    p_tok = prompt_tokens
    base: dict[str, Any] = dict(
        query_id=item.id, task=item.source, difficulty=item.difficulty,
        question=item.question, gold=item.gold, prompt_tokens=p_tok,
        max_tokens=settings.max_tokens, seed=settings.seed, backend=backend,
    )
    mean_gen = float(np.mean([s.generated_tokens for s in samples]))
    rows = [
        OutcomeRow(**base, config="greedy", strategy="single", n=1, selector="first",
                   temperature=0.0, soft_label=float(greedy.correct),
                   tokens=float(p_tok + greedy.generated_tokens),
                   generated_tokens=float(greedy.generated_tokens),
                   latency_s=latency.predict(1, greedy.generated_tokens),
                   latency_source="model", bootstrapped=False),
        OutcomeRow(**base, config="single", strategy="single", n=1, selector="first",
                   temperature=SAMPLING_TEMPERATURE,
                   soft_label=float(np.mean([s.correct for s in samples])),
                   tokens=p_tok + mean_gen, generated_tokens=mean_gen,
                   latency_s=float(np.mean([latency.predict(1, s.generated_tokens)
                                            for s in samples])),
                   latency_source="model", bootstrapped=True),
    ]
    for n in settings.sample_ns:
        for selector in ("majority", "confidence"):
            b = bootstrap(samples, n, selector, settings.resamples, rng)  # type: ignore[arg-type]
            extra = ({"n_max_wall_s_concurrent": n_max_wall_s}
                     if n == settings.n_max and n_max_wall_s is not None else {})
            rows.append(
                OutcomeRow(**base, config=f"bo{n}-{selector}", strategy="best_of_n", n=n,
                           selector=selector, temperature=SAMPLING_TEMPERATURE,
                           soft_label=b.soft_label, tokens=p_tok + b.generated_tokens,
                           generated_tokens=b.generated_tokens,
                           latency_s=float(np.mean([latency.predict(n, L)
                                                    for L in b.longest_tokens])),
                           latency_source="model", bootstrapped=n < settings.n_max,
                           extra=extra)
            )
    return rows


def rebuild(
    out: Path, items: Sequence[TaskItem], settings: CollectSettings, dest: Path
) -> int:
    """Re-derive the sampling rows of `out` from its samples and latency files into `dest`.

    The same seed gives the same bootstrap subsets; the latency model is fitted
    afresh from the latency file (with the current fitting code). Beam rows
    (measured, not derived) are copied over. Returns the number of queries.
    """
    records = {r["query_id"]: r for r in read_rows(_side(out, "samples"))}
    old = read_rows(out)
    prompt_tokens = {r["query_id"]: int(r["prompt_tokens"]) for r in old}
    backend = {r["query_id"]: r.get("backend", "unknown") for r in old}
    latency = LatencyModel.fit(
        [LatencyMeasurement(**m) for m in read_rows(_side(out, "latency"))]
    )
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        dest.unlink()
    count = 0
    for item in items:
        rec = records.get(item.id)
        if rec is None:
            continue
        samples = [SampleOutcome(**s) for s in rec["samples"]]
        rows: list[Any] = rows_from_samples(
            item, samples, SampleOutcome(**rec["greedy"]),
            int(rec.get("prompt_tokens", prompt_tokens[item.id])), settings, latency,
            random.Random(f"{settings.seed}:{item.id}"),
            backend=rec.get("backend", backend[item.id]),
        )
        rows += [r for r in old if r["query_id"] == item.id and r["strategy"] == "beam"]
        _append(dest, rows)
        count += 1
    return count


async def beam_rows(engine: Any, item: TaskItem, settings: CollectSettings) -> list[OutcomeRow]:
    """Beam configurations run for real (alone, so their wall time is a latency)."""
    prompt = engine.apply_chat_template(item.messages())
    rows = []
    for width in settings.beam_widths:
        cfg = StrategyConfig(strategy="beam", n=width, max_tokens=settings.max_tokens,
                             temperature=SAMPLING_TEMPERATURE)
        res = await run_strategy(engine, StepInput(prompt=prompt, answer_kind="math"), cfg)
        answer = res.selected.answer or extract_answer(res.selected.text, "math")
        ok = answer is not None and answers_equal(answer, item.gold)
        rows.append(
            OutcomeRow(query_id=item.id, task=item.source, difficulty=item.difficulty,
                       question=item.question, gold=item.gold,
                       prompt_tokens=res.cost.prompt_tokens, config=cfg.name,
                       strategy="beam", n=width, selector="beam", temperature=cfg.temperature,
                       max_tokens=settings.max_tokens, soft_label=float(ok),
                       tokens=float(res.cost.total_tokens),
                       generated_tokens=float(res.cost.generated_tokens),
                       latency_s=res.cost.wall_s, latency_source="measured",
                       bootstrapped=False, seed=settings.seed,
                       backend=getattr(engine, "backend_id", "unknown"),
                       extra={"engine_calls": res.cost.engine_calls})
        )
    return rows


# ------------------------------------------------------------------ files
def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSONL (optionally .gz) outcome file."""
    import gzip

    if not path.exists():
        return []
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:  # type: ignore[operator]
        return [json.loads(line) for line in fh if line.strip()]


def completed_queries(rows: Sequence[dict[str, Any]], names: Sequence[str]) -> set[str]:
    """Query ids with a row for every configuration in `names`."""
    have: dict[str, set[str]] = {}
    for r in rows:
        have.setdefault(r["query_id"], set()).add(r["config"])
    need = set(names)
    return {q for q, got in have.items() if need <= got}


def _append(path: Path, records: Sequence[Any]) -> None:
    with path.open("a", encoding="utf-8") as fh:
        for rec in records:
            obj = asdict(rec) if hasattr(rec, "__dataclass_fields__") else rec
            fh.write(json.dumps(obj, sort_keys=True) + "\n")
        fh.flush()


def _side(out: Path, kind: str) -> Path:
    return out.with_name(out.name.removesuffix(".jsonl") + f".{kind}.jsonl")


async def collect(
    engine: Any, items: Sequence[TaskItem], out: Path, settings: CollectSettings,
    show: bool = True,
) -> dict[str, Any]:
    """Collect outcomes for `items` into `out` (resuming). Returns a summary."""
    from tqdm import tqdm

    out.parent.mkdir(parents=True, exist_ok=True)
    names = grid_names(settings)
    beam_names = [f"beam{w}" for w in settings.beam_widths]
    existing = read_rows(out)
    sampled_done = completed_queries(existing, [n for n in names if n not in beam_names])
    done = completed_queries(existing, names)
    lat_path = _side(out, "latency")
    measurements = [LatencyMeasurement(**m) for m in read_rows(lat_path)]
    if not measurements and settings.latency_items:
        measurements = await measure_latency(engine, items[: settings.latency_items], settings,
                                             show)
        _append(lat_path, measurements)
    if not measurements:
        raise TidalConfigError("no latency measurements: pass latency_items >= 1.")
    latency = LatencyModel.fit(measurements)
    todo = [i for i in items if i.id not in done]
    t0 = time.perf_counter()
    written = 0
    bar = tqdm(total=len(items), initial=len(items) - len(todo), desc="collect",
               disable=not show, file=sys.stderr)
    for start in range(0, len(todo), settings.concurrency):
        batch = todo[start : start + settings.concurrency]
        # one rng per query, from the seed and the query id: resumable and order-free
        need = [it for it in batch if it.id not in sampled_done]
        results = dict(zip([it.id for it in need], await asyncio.gather(
            *[collect_item(engine, it, settings, latency,
                           random.Random(f"{settings.seed}:{it.id}")) for it in need]
        ), strict=True))
        for it in batch:
            rows, record = results.get(it.id, ([], None))
            if settings.beam_widths:  # a later pass may add beam rows to sampled queries
                rows = rows + await beam_rows(engine, it, settings)
            _append(out, rows)
            if record is not None:
                _append(_side(out, "samples"), [record])
            written += 1
            bar.update(1)
    bar.close()
    return {"items": len(items), "skipped": len(items) - len(todo), "collected": written,
            "wall_s": time.perf_counter() - t0, "out": str(out),
            "latency_model": latency.coefficients}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """`tidal-agents collect`'s options."""
    p.add_argument("--task", choices=TASKS, default="arith")
    p.add_argument("--limit", type=int, default=None, help="items (arith default: 200)")
    p.add_argument("--out", type=Path, required=True, help="JSONL output (appended, resumable)")
    p.add_argument("--seed", type=int, default=0, help="arith items and bootstrap subsets")
    p.add_argument("--n-max", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=96)
    p.add_argument("--resamples", type=int, default=DEFAULT_RESAMPLES)
    p.add_argument("--concurrency", type=int, default=4, help="queries in flight at once")
    p.add_argument("--latency-items", type=int, default=8,
                   help="queries measured alone at n=1,2,4,8,n_max for the latency model")
    p.add_argument("--beam-widths", type=int, nargs="*", default=[],
                   help="beam configurations run for real via run_strategy")
    p.add_argument("--model", default=None, help="HF model folder (default: embedded)")
    p.add_argument("--rebuild-to", type=Path, default=None,
                   help="no engine: re-derive --out's rows from its samples/latency files here")


def run(args: argparse.Namespace) -> int:
    """`tidal-agents collect` with parsed options: see the module docstring."""
    settings = CollectSettings(
        n_max=args.n_max, max_tokens=args.max_tokens, resamples=args.resamples, seed=args.seed,
        concurrency=args.concurrency, latency_items=args.latency_items,
        beam_widths=tuple(args.beam_widths),
    )
    items = load_task(args.task, args.limit, seed=args.seed)
    if args.rebuild_to is not None:
        count = rebuild(args.out, items, settings, args.rebuild_to)
        print(json.dumps({"rebuilt_queries": count, "out": str(args.rebuild_to)}))
        return 0
    engine = get_engine(EngineConfig(model=args.model))
    summary = asyncio.run(collect(engine, items, args.out, settings))
    print(json.dumps(summary, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    """`tidal-agents collect`: see the module docstring."""
    p = argparse.ArgumentParser(prog="tidal-agents collect", description=__doc__.splitlines()[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
