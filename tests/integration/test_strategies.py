"""Every strategy on the real engine: exact cost accounting, deadlines, adaptive stop, beams."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from tidal_agents.engine import Engine, GenerationRequest, GenerationResult, GuidedDecoding
from tidal_agents.errors import TidalConfigError
from tidal_agents.selection import parse_tool_call
from tidal_agents.strategies import StepInput, StrategyConfig, StrategyResult, run_strategy

pytestmark = pytest.mark.engine


class Recording:
    """The real engine, with every request and result kept for checking the cost record."""

    def __init__(self, inner: Engine) -> None:
        self.inner = inner
        self.requests: list[GenerationRequest] = []
        self.results: list[GenerationResult] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def generate(
        self, request: GenerationRequest, on_token: Callable[[int, str], None] | None = None
    ) -> GenerationResult:
        result = await self.inner.generate(request, on_token)
        self.requests.append(request)
        self.results.append(result)
        return result


def assert_exact_cost(res: StrategyResult, rec: Recording) -> None:
    c = res.cost
    assert c.engine_calls == len(rec.results) > 0
    assert c.prompt_tokens == sum(r.prompt_tokens for r in rec.results)
    assert c.cached_prompt_tokens == sum(r.cached_prompt_tokens for r in rec.results)
    assert c.generated_tokens == sum(r.generated_tokens for r in rec.results)
    # and the engine's own count is the tokens its samples really hold
    assert c.generated_tokens == sum(len(s.token_ids) for r in rec.results for s in r.samples)


@pytest.fixture
def rec(backend: Engine) -> Recording:
    return Recording(backend)


@pytest.fixture
def math_prompt(backend: Engine) -> str:
    return backend.apply_chat_template(
        [{"role": "user", "content": "What is 12 + 7? Think step by step, one step per line."}]
    )


async def test_single_greedy_is_deterministic_and_exact(rec: Recording, math_prompt: str) -> None:
    cfg = StrategyConfig("single", temperature=0.0, max_tokens=16)
    step = StepInput(prompt=math_prompt, answer_kind="math")
    a = await run_strategy(rec, step, cfg)
    assert_exact_cost(a, rec)
    assert a.cost.engine_calls == 1 and not a.cost.cut_short
    assert rec.requests[0].temperature == 0.0 and rec.requests[0].n == 1
    assert a.selected.text == rec.results[0].samples[0].text
    # one sample is never compared: no log-probs unless the step asks for them
    assert rec.requests[0].logprobs is None and a.selected.token_logprobs == ()
    b = await run_strategy(rec, replace(step, logprobs=True), cfg)
    assert rec.requests[1].logprobs == 0
    assert b.selected.token_ids == a.selected.token_ids
    assert len(b.selected.token_logprobs) == len(b.selected.token_ids) > 0


async def test_best_of_n_is_one_request(rec: Recording, math_prompt: str) -> None:
    cfg = StrategyConfig("best_of_n", n=4, selector="majority", max_tokens=24)
    res = await run_strategy(rec, StepInput(prompt=math_prompt, answer_kind="math"), cfg)
    assert_exact_cost(res, rec)
    assert res.cost.engine_calls == 1 and rec.requests[0].n == 4
    assert len(res.candidates) == 4
    assert res.selected in res.candidates
    assert res.selected is res.candidates[res.details["selected_index"]]
    voters = sum(1 for c in res.candidates if c.answer is not None)
    assert sum(res.details["tally"].values()) == voters


async def test_tool_vote_on_guided_tool_calls(backend: Engine, rec: Recording) -> None:
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "enum": ["add", "multiply"]},
            "arguments": {
                "type": "object",
                "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                "required": ["a", "b"],
                "additionalProperties": False,
            },
        },
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }
    prompt = backend.apply_chat_template(
        [{"role": "user", "content": "Call a tool to add 2 and 3. Reply with JSON."}]
    )
    step = StepInput(prompt=prompt, guided=GuidedDecoding(json_schema=schema),
                     answer_kind="tool_call")
    cfg = StrategyConfig("best_of_n", n=4, selector="tool_vote", max_tokens=48)
    res = await run_strategy(rec, step, cfg)
    assert_exact_cost(res, rec)
    call = parse_tool_call(res.selected.text)
    assert isinstance(call, dict) and call["name"] in ("add", "multiply")
    assert res.details["rule"] == "tool_vote"
    assert res.selected.answer in res.details["tally"]


async def test_adaptive_stops_early_on_an_easy_question(
    backend: Engine, rec: Recording
) -> None:
    # With the answer constrained to four words and a low temperature, the model
    # agrees with itself at once:
    # the adaptive rule must notice and stop before drawing all 8.
    prompt = backend.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}]
    )
    step = StepInput(prompt=prompt, answer_kind="text",
                     guided=GuidedDecoding(choice=("Paris", "London", "Rome", "Madrid")))
    adaptive = await run_strategy(
        rec, step,
        StrategyConfig("best_of_n", n=8, selector="majority", adaptive=True, max_tokens=8,
                       temperature=0.1),
    )
    assert_exact_cost(adaptive, rec)
    assert adaptive.details["stop"] in ("decisive", "unassailable")
    assert adaptive.details["samples"] < 8
    assert adaptive.details["waves"] == [2, 2][: len(adaptive.details["waves"])]
    full = await run_strategy(
        backend, step,
        StrategyConfig("best_of_n", n=8, selector="majority", max_tokens=8, temperature=0.1),
    )
    assert full.details["samples"] == 8
    assert adaptive.cost.generated_tokens < full.cost.generated_tokens


async def test_beam_returns_a_candidate_and_counts_pruned_tokens(
    rec: Recording, math_prompt: str
) -> None:
    cfg = StrategyConfig("beam", n=2, expansions=2, max_tokens=48)
    res = await run_strategy(rec, StepInput(prompt=math_prompt, answer_kind="math"), cfg,
                             delimiter="\n")
    assert_exact_cost(res, rec)
    assert res.selected.text and res.selected.token_ids
    assert len(res.selected.token_ids) <= 48
    d = res.details
    # round 1 draws width x expansions = 4 first steps in one request
    assert rec.requests[0].n == 4 and "\n" in rec.requests[0].stop
    assert d["rounds"] >= 1 and d["pruned_beams"] >= 1 and d["pruned_tokens"] > 0
    # pruned work is paid for: the record holds more than the surviving traces
    assert res.cost.generated_tokens >= d["pruned_tokens"] + d["selected_tokens"]
    # later rounds continue a beam from its exact token prefix
    first = rec.requests[0].prompt
    assert isinstance(first, tuple)
    for req in rec.requests[1:]:
        assert isinstance(req.prompt, tuple) and len(req.prompt) > len(first)
        assert req.prompt[: len(first)] == first
    if d["completed"]:
        best = max(c.score for c in res.candidates[: d["completed"]] if c.score is not None)
        assert res.selected.score == best


async def test_vllm_beam_width_1_is_greedy_and_exact(rec: Recording, math_prompt: str) -> None:
    step = StepInput(prompt=math_prompt, answer_kind="math")
    res = await run_strategy(rec, step, StrategyConfig("vllm_beam", n=1, max_tokens=6))
    assert_exact_cost(res, rec)
    # one one-token request per round, each asking for 2 * width top log-probs
    assert all(r.max_tokens == 1 and r.logprobs == 2 for r in rec.requests)
    assert res.cost.generated_tokens == res.cost.engine_calls == res.details["rounds"] == 6
    greedy = await run_strategy(rec, step, StrategyConfig("single", temperature=0.0, max_tokens=6))
    assert res.selected.token_ids == greedy.selected.token_ids


async def test_vllm_beam_width_2_issues_a_request_per_beam(
    rec: Recording, math_prompt: str
) -> None:
    step = StepInput(prompt=math_prompt, answer_kind="math")
    res = await run_strategy(rec, step, StrategyConfig("vllm_beam", n=2, max_tokens=4))
    assert_exact_cost(res, rec)
    assert res.cost.engine_calls == 1 + 2 * 3  # round 1 from the prompt, then 2 beams
    assert len(res.candidates) == 2
    scores = [c.score for c in res.candidates]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize(
    "cfg",
    [
        StrategyConfig("best_of_n", n=4, selector="majority", max_tokens=64, temperature=0.7),
        StrategyConfig("best_of_n", n=8, selector="majority", max_tokens=64, adaptive=True),
        StrategyConfig("beam", n=2, expansions=2, max_tokens=64),
        StrategyConfig("vllm_beam", n=2, max_tokens=64),
    ],
    ids=lambda c: c.name,
)
async def test_tight_deadline_returns_promptly_cut_short(
    rec: Recording, math_prompt: str, cfg: StrategyConfig
) -> None:
    step = StepInput(prompt=math_prompt, answer_kind="math")
    t0 = time.monotonic()
    res = await run_strategy(rec, step, cfg, deadline=t0 + 0.4)
    elapsed = time.monotonic() - t0
    assert res.cost.cut_short
    assert elapsed < 2.5, f"{cfg.name} overran its 0.4 s deadline by {elapsed - 0.4:.2f} s"
    assert isinstance(res.selected.text, str)
    assert_exact_cost(res, rec)


async def test_past_deadline_single_returns_partial_not_raise(
    rec: Recording, math_prompt: str
) -> None:
    res = await run_strategy(
        rec, StepInput(prompt=math_prompt), StrategyConfig("single", max_tokens=32),
        deadline=time.monotonic() - 1.0,
    )
    assert res.cost.cut_short and res.selected.finish_reason == "timeout"
    assert res.cost.engine_calls == 1
    assert_exact_cost(res, rec)


async def test_bad_configurations_raise_typed_errors(
    backend: Engine, math_prompt: str
) -> None:
    step = StepInput(prompt=math_prompt)
    with pytest.raises(TidalConfigError, match="n=11"):
        await run_strategy(backend, step, StrategyConfig("vllm_beam", n=11))
    guided = StepInput(prompt=math_prompt, guided=GuidedDecoding(regex="[0-9]"))
    with pytest.raises(TidalConfigError, match="grammar"):
        await run_strategy(backend, guided, StrategyConfig("beam", n=2))
    with pytest.raises(TidalConfigError, match="selector='first'"):
        await run_strategy(backend, step, StrategyConfig("best_of_n", n=4, adaptive=True))
    with pytest.raises(TidalConfigError, match="scorer"):
        await run_strategy(backend, step, StrategyConfig("best_of_n", n=2, selector="scorer"))
