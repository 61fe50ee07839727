"""Every strategy on the fake engine: one call shape, exact cost sums, deadlines."""

from __future__ import annotations

import inspect
import time
from typing import Any

import pytest

from tests.fakes import FakeEngine
from tidal_agents.allocation.calibrate import acalibrate, calibrate
from tidal_agents.engine.types import GenerationRequest, GenerationResult, TokenCallback
from tidal_agents.strategies import STRATEGIES, run_strategy
from tidal_agents.strategies.base import StepInput
from tidal_agents.types import AnswerKind, StrategyConfig

MATH_STEPS = ("Step one.\n\nStep two.\n\nThe answer is \\boxed{4}", "First.\n\nSo \\boxed{5}",
              "Hmm.\n\nMore.\n\nStill.\n\n", "\\boxed{4}")


class RecordingEngine(FakeEngine):
    """The fake engine, keeping every result it returned."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.results: list[GenerationResult] = []

    async def generate(
        self, request: GenerationRequest, on_token: TokenCallback | None = None
    ) -> GenerationResult:
        result = await super().generate(request, on_token)
        self.results.append(result)
        return result


CASES: list[tuple[StrategyConfig, tuple[str, ...], AnswerKind]] = [
    (StrategyConfig("single", temperature=0.0), ("hello world",), "text"),
    (StrategyConfig("best_of_n", n=4, selector="majority"),
     ("The answer is 3", "The answer is 4", "The answer is 3", "x"), "math"),
    (StrategyConfig("best_of_n", n=8, selector="majority", adaptive=True),
     ("The answer is 3",), "math"),
    (StrategyConfig("beam", n=2, max_tokens=40), MATH_STEPS, "math"),
    (StrategyConfig("vllm_beam", n=2, max_tokens=4), ("one two three",), "text"),
]


@pytest.mark.parametrize("config, replies, kind", CASES, ids=[c[0].name for c in CASES])
async def test_cost_is_the_sum_of_the_engine_results(
    config: StrategyConfig, replies: tuple[str, ...], kind: AnswerKind
) -> None:
    engine = RecordingEngine(replies=replies)
    result = await run_strategy(engine, StepInput(prompt="Q: what? A:", answer_kind=kind),
                                config)
    cost = result.cost
    assert cost.engine_calls == len(engine.results) >= 1
    assert cost.prompt_tokens == sum(r.prompt_tokens for r in engine.results)
    assert cost.generated_tokens == sum(r.generated_tokens for r in engine.results)
    assert not cost.cut_short and cost.servers == () and cost.engine_retries == 0
    assert result.config == config and result.selected in result.candidates


@pytest.mark.parametrize("config, replies, kind", CASES, ids=[c[0].name for c in CASES])
async def test_a_slow_engine_past_the_deadline_cuts_the_run_short(
    config: StrategyConfig, replies: tuple[str, ...], kind: AnswerKind
) -> None:
    engine = RecordingEngine(replies=replies, delay_s=0.5)
    started = time.monotonic()
    result = await run_strategy(engine, StepInput(prompt="Q: what? A:", answer_kind=kind),
                                config, started + 0.05)
    assert result.cost.cut_short and result.selected.finish_reason == "timeout"
    assert time.monotonic() - started < 0.45
    assert len(engine.results) == 1


@pytest.mark.parametrize("config", [c for c, _, _ in CASES], ids=[c[0].name for c in CASES])
async def test_only_single_streams(config: StrategyConfig) -> None:
    streamed: list[tuple[int, str]] = []
    await run_strategy(RecordingEngine(replies=("a b",)), StepInput(prompt="Q:"), config,
                       None, lambda i, t: streamed.append((i, t)))
    assert bool(streamed) == (config.strategy == "single")


async def test_beam_options_reach_the_strategy() -> None:
    engine = RecordingEngine(replies=MATH_STEPS)
    result = await run_strategy(engine, StepInput(prompt="Q:", answer_kind="math"),
                                StrategyConfig("beam", n=2, max_tokens=40), max_rounds=1)
    assert result.details["rounds"] == 1 and result.details["stop"] == "max_rounds"
    assert all(r.stop[0] == "\n\n" for r in engine.requests)


def test_every_strategy_takes_one_run() -> None:
    for name, fn in STRATEGIES.items():
        assert list(inspect.signature(fn).parameters)[0] == "run", name


def test_calibrate_is_the_blocking_acalibrate() -> None:
    assert calibrate.__name__ == "calibrate"
    assert inspect.signature(calibrate) == inspect.signature(acalibrate)
    assert not inspect.iscoroutinefunction(calibrate)
