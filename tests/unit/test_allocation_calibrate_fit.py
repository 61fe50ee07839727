"""The calibration fit (pure: synthetic measurements from known parameters)."""

from __future__ import annotations

import random

import pytest

from tidal_agents.allocation.calibrate import Measurement, fit_params
from tidal_agents.allocation.cost_model import CostParams

TRUE = CostParams(overhead_s=0.08, prefill_s_per_token=0.002, decode_step_s=0.03,
                  decode_token_s=0.004)


def synth(noise: float = 0.0, seed: int = 0) -> list[Measurement]:
    rng = random.Random(seed)
    ms = []
    for n in (1, 2, 4, 8, 16):
        for out in (16, 48):
            for prompt in (50, 420):
                wall = (TRUE.overhead_s + TRUE.prefill_s_per_token * prompt
                        + TRUE.decode_step_s * out + TRUE.decode_token_s * n * out)
                wall *= 1 + rng.uniform(-noise, noise)
                ms.append(Measurement(n=n, output_tokens=out, prompt_tokens=prompt,
                                      cached_prompt_tokens=0, generated_tokens=n * out,
                                      wall_s=wall))
    return ms


def test_exact_data_recovers_the_parameters() -> None:
    params, stats = fit_params(synth(), prior_weight=0.0)
    for name in ("overhead_s", "prefill_s_per_token", "decode_step_s", "decode_token_s"):
        assert getattr(params, name) == pytest.approx(getattr(TRUE, name), rel=1e-6)
    assert stats["r2"] == pytest.approx(1.0) and stats["mean_rel_error"] < 1e-9


def test_noisy_data_with_the_prior_pull_stay_close() -> None:
    params, stats = fit_params(synth(noise=0.2, seed=3))
    assert params.decode_step_s == pytest.approx(TRUE.decode_step_s, rel=0.3)
    assert params.decode_token_s == pytest.approx(TRUE.decode_token_s, rel=0.3)
    assert 0 < params.overhead_s < 0.5 and stats["samples"] == 20


def test_n1_cached_counts_but_sibling_hits_do_not() -> None:
    # vLLM reports siblings' prefix hits for n > 1: the prompt was still prefilled once
    m1 = Measurement(n=1, output_tokens=8, prompt_tokens=400, cached_prompt_tokens=384,
                     generated_tokens=8, wall_s=1.0)
    m8 = Measurement(n=8, output_tokens=8, prompt_tokens=400, cached_prompt_tokens=384,
                     generated_tokens=64, wall_s=1.0)
    assert m1.shape.prefill_tokens == 16 and m8.shape.prefill_tokens == 400
