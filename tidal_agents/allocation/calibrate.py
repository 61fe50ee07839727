"""`tidal-agents calibrate`: measure this backend and fit the cost model's parameters.

A short sweep of real requests (n in 1..16, two output lengths, a short and a
long prompt) with ``ignore_eos`` so every sample generates exactly the asked
number of tokens. Each request's shape (calls, uncached prompt tokens, decode
steps, generated tokens) is known exactly, so the four linear parameters of
`CostModel` follow from non-negative least squares on relative error, pulled
weakly toward the documented priors (noisy data on a shared CPU cannot then
produce absurd parameters). Cells run in a shuffled order, so a burst of load
from other processes spreads over many cells. Step beam search is measured
through ``run_strategy`` and gets a per-configuration correction factor.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import math
import os
import random
import time
import uuid
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import numpy as np

from tidal_agents.allocation.cost_model import (
    DEFAULT_BEAM_FACTORS,
    CostModel,
    CostParams,
    RunShape,
)
from tidal_agents.allocation.features import StepFeatures
from tidal_agents.engine.types import Engine, GenerationRequest
from tidal_agents.strategies import run_strategy
from tidal_agents.strategies.base import StepInput
from tidal_agents.types import StrategyConfig

logger = logging.getLogger(__name__)
T = TypeVar("T")
P = ParamSpec("P")

_FILLER = (
    "The committee reviewed the quarterly figures for the northern depots, noting that "
    "deliveries of grain, timber and copper rose while the cost of fuel fell slightly. "
)


@dataclass(frozen=True)
class Measurement:
    """One measured engine request and its exactly known shape."""

    n: int
    output_tokens: int
    prompt_tokens: int
    cached_prompt_tokens: int
    generated_tokens: int
    wall_s: float

    @property
    def shape(self) -> RunShape:
        # With n > 1 vLLM reports the siblings' hits on the first child's blocks as
        # "cached"; the prompt was still prefilled once, so only n = 1 hits count.
        cached = self.cached_prompt_tokens if self.n == 1 else 0
        return RunShape(
            calls=1.0,
            prefill_tokens=float(self.prompt_tokens - cached),
            decode_steps=float(self.output_tokens),
            generated_tokens=float(self.generated_tokens),
        )


@dataclass(frozen=True)
class SweepPlan:
    ns: tuple[int, ...]
    output_tokens: tuple[int, ...]
    long_prompt_ns: tuple[int, ...]
    long_prompt_repeats: int
    repeats: int
    beam_widths: tuple[int, ...]
    #: measuring stops after this many seconds (beam search is skipped once past it)
    seconds: float


FULL_PLAN = SweepPlan(ns=(1, 2, 4, 8, 16), output_tokens=(16, 48), long_prompt_ns=(1, 8),
                      long_prompt_repeats=12, repeats=2, beam_widths=(2, 4), seconds=100.0)
QUICK_PLAN = SweepPlan(ns=(1, 4, 16), output_tokens=(8, 32), long_prompt_ns=(1,),
                       long_prompt_repeats=12, repeats=1, beam_widths=(), seconds=40.0)
#: requests measured before a time budget may stop the sweep
MIN_REQUESTS = 6


def unique_prompt(engine: Engine, filler_repeats: int = 0) -> str:
    """A chat prompt whose user turn starts with a nonce: nothing after the system
    prompt can come from the prefix cache, so prefill cost is really measured."""
    nonce = uuid.uuid4().hex[:12]
    body = f"Note {nonce}. " + _FILLER * filler_repeats + "Summarise the note in one line."
    return engine.apply_chat_template([{"role": "user", "content": body}])


async def measure(engine: Engine, prompt: str, n: int, output_tokens: int) -> Measurement:
    # logprobs=0, as the sampling strategies request by default (StepInput.logprobs):
    # returning each sampled token's log-prob is part of the per-token cost measured
    res = await engine.generate(
        GenerationRequest(prompt=prompt, n=n, temperature=0.8, max_tokens=output_tokens,
                          ignore_eos=True, logprobs=0)
    )
    return Measurement(
        n=n,
        output_tokens=output_tokens,
        prompt_tokens=res.prompt_tokens,
        cached_prompt_tokens=res.cached_prompt_tokens,
        generated_tokens=res.generated_tokens,
        wall_s=res.wall_s,
    )


#: weight of each parameter's pull toward its prior, in units of one request's squared
#: relative error: weak enough that consistent data win, strong enough that noisy data
#: on a contended CPU cannot trade decode time for a 2-second "call overhead"
PRIOR_WEIGHT = 0.02


def fit_params(
    measurements: Sequence[Measurement],
    prior: CostParams | None = None,
    prior_weight: float = PRIOR_WEIGHT,
) -> tuple[CostParams, dict[str, float]]:
    """Non-negative least squares of wall time on the run shape, relative error weighted,
    with a ridge pull toward the prior parameters (relative to their size).

    Returns the parameters and fit statistics: r2 (on seconds), mean and max
    relative error, sample count.
    """
    from scipy.optimize import nnls

    prior = prior or CostParams()
    x = np.array([[m.shape.calls, m.shape.prefill_tokens, m.shape.decode_steps,
                   m.shape.generated_tokens] for m in measurements])
    y = np.array([m.wall_s for m in measurements])
    w = 1.0 / y  # relative error: a 0.3 s request counts as much as a 3 s one
    theta0 = np.array([prior.overhead_s, prior.prefill_s_per_token, prior.decode_step_s,
                       prior.decode_token_s])
    # row k: sqrt(mu) * theta_k / theta0_k should equal sqrt(mu)
    ridge_x = math.sqrt(prior_weight) * np.diag(1.0 / np.maximum(theta0, 1e-9))
    ridge_y = math.sqrt(prior_weight) * np.ones(4)
    coef, _ = nnls(np.vstack([x * w[:, None], ridge_x]), np.concatenate([y * w, ridge_y]))
    params = replace(prior, overhead_s=float(coef[0]), prefill_s_per_token=float(coef[1]),
                     decode_step_s=float(coef[2]), decode_token_s=float(coef[3]))
    pred = x @ coef
    rel = np.abs(pred - y) / y
    ss_res = float(np.sum((pred - y) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2)) or 1.0
    stats = {
        "r2": 1.0 - ss_res / ss_tot,
        "mean_rel_error": float(rel.mean()),
        "max_rel_error": float(rel.max()),
        "samples": float(len(measurements)),
    }
    return params, stats


async def _beam_factors(
    engine: Engine, model: CostModel, widths: Sequence[int]
) -> dict[str, float]:
    """Measured / predicted latency of step beam search, per width."""
    factors: dict[str, float] = {}
    for w in widths:
        config = StrategyConfig(strategy="beam", n=w, max_tokens=48, temperature=0.8)
        ratios = []
        for question in _BEAM_QUESTIONS:
            nonce = uuid.uuid4().hex[:8]
            prompt = engine.apply_chat_template(
                [{"role": "user", "content": f"({nonce}) {question}"}]
            )
            try:
                result = await run_strategy(engine, StepInput(prompt=prompt), config)
            except Exception:  # a strategy bug must not lose the whole calibration
                logger.warning("beam width %d failed during calibration", w, exc_info=True)
                continue
            cost = result.cost
            if cost.generated_tokens <= 0 or cost.wall_s <= 0:
                continue
            features = StepFeatures(prompt_tokens=engine.count_tokens(prompt))
            per_seq = cost.generated_tokens / (w * config.expansions)
            base = model.physics_latency(config, model.shape(config, features, per_seq))
            if base > 0:
                ratios.append(cost.wall_s / base)
        if ratios:
            # geometric mean: the factor multiplies predictions
            factors[config.name] = float(np.clip(np.exp(np.mean(np.log(ratios))), 0.1, 10.0))
    return factors


_BEAM_QUESTIONS = (
    "Summarise in one line why the sky is blue.",
    "What is 17 + 25? Think step by step.",
)


def _median(ms: list[Measurement]) -> Measurement:
    """The lower-median run of a cell (of two: the faster, least disturbed by other
    processes; the online load factor adds contention back)."""
    return sorted(ms, key=lambda m: m.wall_s)[(len(ms) - 1) // 2]


async def acalibrate(
    engine: Engine,
    quick: bool = False,
    save: bool = True,
    path: str | Path | None = None,
    max_seconds: float | None = None,
) -> CostModel:
    """Measure `engine` and return a fitted `CostModel`, saved per backend by default.

    The sweep stops after `max_seconds` (default 100 s, quick 40 s) and fits what
    it measured: on an idle 2-core CPU the full sweep takes ~1-2 minutes, quick
    ~30 s. Saved to `cost_model.default_path(engine.backend_id)` unless
    `save=False`, or to `path`. `calibrate` is the blocking form.
    """
    plan = QUICK_PLAN if quick else FULL_PLAN
    t0 = time.perf_counter()
    await measure(engine, unique_prompt(engine), 2, 8)  # warm-up: first-request costs
    cells = [(n, out, 0) for out in plan.output_tokens for n in plan.ns]
    cells += [(n, plan.output_tokens[0], plan.long_prompt_repeats) for n in plan.long_prompt_ns]
    # Shuffled (fixed seed) so a burst of load from other processes hits a mix of
    # cells instead of biasing one n; each cell keeps its median over repeats.
    order = [c for _ in range(plan.repeats) for c in cells]
    random.Random(0).shuffle(order)
    budget = plan.seconds if max_seconds is None else max_seconds
    by_cell: dict[tuple[int, int, int], list[Measurement]] = {}
    for i, (n, out, filler) in enumerate(order):
        if i >= MIN_REQUESTS and time.perf_counter() - t0 > budget:
            # a loaded machine: fit what we have (the prior pull keeps it sane)
            logger.warning("calibration budget of %.0f s spent after %d of %d requests",
                           budget, i, len(order))
            break
        m = await measure(engine, unique_prompt(engine, filler), n, out)
        by_cell.setdefault((n, out, filler), []).append(m)
    ms = [_median(v) for v in by_cell.values()]
    params, stats = fit_params(ms)
    # quick calibration does not run beam search: it keeps the documented corrections
    model = CostModel(params=params, backend_id=engine.backend_id, source="calibrated",
                      config_factors=dict(DEFAULT_BEAM_FACTORS))
    if plan.beam_widths and time.perf_counter() - t0 < budget:
        model.config_factors.update(await _beam_factors(engine, model, plan.beam_widths))
    stats["seconds"] = time.perf_counter() - t0
    stats["requests"] = float(sum(len(v) for v in by_cell.values()))
    model.fit = stats
    logger.info("calibrated %s in %.1f s: %s (%s)", engine.backend_id, stats["seconds"],
                params, stats)
    if save:
        model.save(path)
    return model


def _blocking(fn: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, T]:
    """The blocking form of the coroutine function `fn`, with its signature."""

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> T:
        return _run_sync(fn(*args, **kwargs))

    return run


#: `acalibrate`, blocking (from a running event loop too)
calibrate = _blocking(acalibrate)
calibrate.__name__ = calibrate.__qualname__ = "calibrate"


def _run_sync(coro: Coroutine[Any, Any, T]) -> T:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    # called from inside a running loop: block this caller on a helper thread
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


#: the shape docs/design-notes.md, 'CPU engine settings' measured: a 38-token prompt
#: and 64 new tokens, one sample and eight
REFERENCE_FEATURES = StepFeatures(prompt_tokens=38, expected_output_tokens=64)
REFERENCE_CONFIGS: dict[str, StrategyConfig] = {
    "n1": StrategyConfig(strategy="single", temperature=0.0, max_tokens=64),
    "n8": StrategyConfig(strategy="best_of_n", n=8, selector="majority", max_tokens=64),
}


def reference_latencies(model: CostModel) -> dict[str, float]:
    """`model`'s predicted seconds for the reference shapes (`REFERENCE_CONFIGS`)."""
    return {name: model.predict(config, REFERENCE_FEATURES).latency_s
            for name, config in REFERENCE_CONFIGS.items()}


def results_figures(model: CostModel) -> dict[str, Any]:
    """What `tidal-agents calibrate --out` writes: the fitted model, its predictions for
    the reference shapes beside the priors', and how loaded the machine was."""
    return {
        "cost_model": model.to_dict(),
        "reference_latency_s": reference_latencies(model),
        "prior_reference_latency_s": reference_latencies(CostModel.default()),
        "load_average_1m_at_end": os.getloadavg()[0],
        "definitions": {
            "reference_latency_s": "predicted wall seconds of n=1 (greedy) and n=8 "
            "(best-of-8) with a 38-token prompt and 64 new tokens, from the fitted model",
            "prior_reference_latency_s": "the same from the documented priors (CostParams)",
            "load_average_1m_at_end": "the machine's 1-minute load average when the "
            "sweep ended (other processes share its cores)",
        },
    }


def summary(model: CostModel) -> str:
    """One paragraph for the CLI."""
    p = model.params
    fit = model.fit
    lines = [
        f"backend: {model.backend_id}",
        f"overhead {p.overhead_s * 1000:.1f} ms/call, prefill {p.prefill_s_per_token * 1000:.3f} "
        f"ms/token, decode {p.decode_step_s * 1000:.2f} ms/step + "
        f"{p.decode_token_s * 1000:.3f} ms/sequence/step",
    ]
    if fit:
        lines.append(
            f"fit: R^2 {fit.get('r2', math.nan):.3f}, mean relative error "
            f"{fit.get('mean_rel_error', math.nan):.1%}, {int(fit.get('samples', 0))} requests, "
            f"{fit.get('seconds', math.nan):.0f} s"
        )
    if model.config_factors:
        lines.append("corrections: " + ", ".join(
            f"{k} x{v:.2f}" for k, v in sorted(model.config_factors.items())))
    return "\n".join(lines)
