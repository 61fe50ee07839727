"""Pure rules behind the strategies: adaptive stopping, wave sizes, vLLM's beam score."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidal_agents.errors import TidalConfigError
from tidal_agents.strategies import StepInput, StrategyConfig, run_strategy
from tidal_agents.strategies.best_of_n import (
    leader_confidence,
    vote_decided,
    wave_sizes,
)
from tidal_agents.strategies.vllm_beam import _Seq, beam_score


def test_leader_confidence_matches_the_beta_tail() -> None:
    # P(Beta(a+1, b+1) > 1/2): 4-0 -> 31/32, 3-0 -> 15/16, 5-1 -> 120/128
    assert leader_confidence(4, 0) == pytest.approx(31 / 32)
    assert leader_confidence(3, 0) == pytest.approx(15 / 16)
    assert leader_confidence(5, 1) == pytest.approx(120 / 128)
    assert leader_confidence(2, 2) == pytest.approx(0.5)


def test_vote_decided_rules() -> None:
    assert vote_decided([4], remaining=4) == (True, "decisive")
    assert vote_decided([3], remaining=5) == (False, "undecided")
    assert vote_decided([2, 2], remaining=4) == (False, "undecided")
    # 5 vs 1 with 1 sample left can no longer be overturned
    assert vote_decided([5, 1], remaining=1) == (True, "unassailable")
    assert vote_decided([], remaining=6) == (False, "no_votes")


@given(st.integers(min_value=1, max_value=300))
def test_wave_sizes_double_up_to_n(n: int) -> None:
    sizes = wave_sizes(n)
    assert sum(sizes) == n and all(s >= 1 for s in sizes)
    totals = [sum(sizes[: i + 1]) for i in range(len(sizes))]
    assert totals[0] == min(n, 2)
    for prev, cur in zip(totals, totals[1:], strict=False):
        assert cur == min(n, prev * 2)


def test_vllm_beam_score_is_vllms_length_normalisation() -> None:
    # length counts the prompt, not a trailing EOS (get_beam_search_score)
    assert beam_score(_Seq((5, 6, 7, 8), cum_logprob=-2.0), eos=2, length_penalty=1.0) == -0.5
    assert beam_score(_Seq((5, 6, 7, 2), cum_logprob=-3.0), eos=2, length_penalty=1.0) == -1.0
    assert math.isclose(
        beam_score(_Seq((5, 6, 7, 8), cum_logprob=-2.0), eos=2, length_penalty=0.5), -1.0
    )


async def test_run_strategy_rejects_non_step_before_any_engine_call() -> None:
    with pytest.raises(TidalConfigError, match="StepInput"):
        await run_strategy(object(), "prompt", StrategyConfig("single"))  # type: ignore[arg-type]
    assert StepInput(prompt="x").answer_kind == "text"
