"""`bench invoke`'s held-out steps and figures (pure logic, no engine)."""

from __future__ import annotations

import pytest

from tidal_agents.bench.invoke import (
    InvokeOutcome,
    held_out_steps,
    policies,
    summarise,
    training_questions,
)


def _outcome(step: str, policy: str, correct: bool, tokens: int,
             kind: str = "text") -> InvokeOutcome:
    return InvokeOutcome(step_id=step, kind=kind, policy=policy, correct=correct,
                         output_tokens=tokens, strategy=policy, predictor_kind="trained")


def test_held_out_steps_never_repeat_a_training_question() -> None:
    steps = held_out_steps(arith=10, gsm8k_items=3, agent=4, seed=7, gsm8k_offset=40)
    seen = training_questions()
    assert seen and steps
    assert not {s.question for s in steps} & seen
    assert {s.kind for s in steps} == {"text", "tool_call", "tool_answer"}


def test_policies_are_adaptive_and_the_grid_without_beam() -> None:
    names = list(policies(64))
    assert names[0] == "adaptive"
    assert "greedy" in names and "bo16-majority" in names
    assert not any(n.startswith("beam") for n in names)


def test_summary_pairs_adaptive_with_the_best_static() -> None:
    outcomes = [
        _outcome("a", "adaptive", True, 10), _outcome("a", "greedy", True, 10),
        _outcome("a", "bo4", True, 40),
        _outcome("b", "adaptive", True, 40), _outcome("b", "greedy", False, 10),
        _outcome("b", "bo4", True, 40),
        _outcome("c", "adaptive", False, 10), _outcome("c", "greedy", False, 10),
        _outcome("c", "bo4", False, 40),
    ]
    figures = summarise(outcomes)
    assert figures["best_static"] == "bo4"
    assert figures["adaptive_minus_best_static"]["difference"] == pytest.approx(0.0)
    assert figures["adaptive_token_share_of_best_static"] == pytest.approx(60 / 120)
    assert figures["goals_met"] is True
    # a tie in accuracy goes to the cheaper static: the stronger baseline
    tie = [o for o in outcomes if o.step_id != "b"]
    assert summarise(tie)["best_static"] == "greedy"
    assert summarise(tie)["goal_tokens_met"] is False
