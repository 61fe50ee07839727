"""The step pipeline phase by phase, on the fake engine (no vLLM)."""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import replace

import pytest
from fakes import ADD_TOOL, FakeClock, FakeEngine
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

from tidal_agents import tool_protocol as tp
from tidal_agents.allocation import CostModel, PriorAccuracyPredictor, StepFeatures
from tidal_agents.allocation.tool_time import TOOL_TIMES
from tidal_agents.episode import Episode, EpisodeRegistry
from tidal_agents.errors import TidalConfigError, TidalEngineError
from tidal_agents.step import execute as execute_module
from tidal_agents.step.decide import (
    AllocationSettings,
    decide_step,
    fit_config,
    predictor_for,
    step_grid,
)
from tidal_agents.step.execute import execute
from tidal_agents.step.finish import prefer_complete, repeats_answered_call, usage_metadata
from tidal_agents.step.pipeline import StepPipeline, StepSettings, episode_for_call
from tidal_agents.step.prepare import parse_call_options, prepare_step
from tidal_agents.strategies.base import StepInput
from tidal_agents.trace.outcomes import is_usable_reply
from tidal_agents.types import Candidate, CostRecord, StrategyConfig, StrategyResult
from tidal_agents.validation import check_stop

GREEDY = StrategyConfig("single", temperature=0.0, max_tokens=16)

#: keys every step's JSONL record carries (later fields may be added, never removed)
REQUIRED_RECORD_KEYS = {
    "episode_id", "step_index", "node", "langgraph_step", "started_at", "ended_at",
    "time_left_before_s", "time_left_after_s", "allowance_s", "decision", "strategy", "n",
    "predicted_latency_s", "predicted_tokens", "predicted_accuracy", "spent", "selection",
    "cut_short", "finish", "error", "features",
}
REQUIRED_DECISION_KEYS = {
    "chosen", "config", "reason", "allowance_s", "any_fits", "latency_headroom",
    "predictor_kind", "lambda_tokens", "lambda_latency", "predicted_accuracy",
    "predicted_tokens", "predicted_latency_s", "candidates",
}
REQUIRED_SPENT_KEYS = {
    "prompt_tokens", "cached_prompt_tokens", "generated_tokens", "engine_calls", "wall_s",
}


def _pipeline(engine: FakeEngine, **allocation: object) -> StepPipeline:
    return StepPipeline(
        engine=engine,
        cost_model=CostModel.default(engine.backend_id),
        predictor=PriorAccuracyPredictor(),
        settings=StepSettings(
            allocation=AllocationSettings(**allocation),  # type: ignore[arg-type]
            max_tokens=32, max_retries=1, model_name="fake-model",
        ),
    )


def _run(pipeline: StepPipeline, messages: list, episode: Episode | None = None, **kwargs):
    options = parse_call_options(kwargs)
    return asyncio.run(pipeline.run(messages, options, (), episode, {}))


# ------------------------------------------------------------------ prepare
def test_unknown_call_arguments_are_named() -> None:
    with pytest.raises(TidalConfigError, match=r"Unknown call arguments \['temprature'\]"):
        parse_call_options({"temprature": 0.3})


def test_empty_messages_are_refused_before_generation() -> None:
    engine = FakeEngine()
    with pytest.raises(TidalConfigError, match="messages is empty"):
        prepare_step(engine, [], parse_call_options({}), (), 32)
    assert engine.requests == []


def test_bad_stop_is_refused() -> None:
    assert check_stop("END") == ("END",)
    with pytest.raises(TidalConfigError, match="stop="):
        check_stop([""])


def test_tools_give_a_tool_grammar_and_the_tool_call_answer_kind() -> None:
    prepared = prepare_step(
        FakeEngine(), [HumanMessage("add 2 and 3")], parse_call_options({"tools": [ADD_TOOL]}),
        (), 32,
    )
    assert prepared.guided is not None and prepared.tool_grammar
    assert prepared.answer_kind == "tool_call"
    assert "add" in prepared.prompt


def test_response_format_gives_a_schema_grammar_and_text_answers() -> None:
    schema = {"type": "object", "properties": {"x": {"type": "integer"}}}
    prepared = prepare_step(
        FakeEngine(), [HumanMessage("x?")], parse_call_options({"response_format": schema}),
        (), 32,
    )
    assert prepared.guided is not None and prepared.guided.json_schema == schema
    assert not prepared.tool_grammar and prepared.answer_kind == "text"


def test_token_room_is_capped_by_the_context_and_overflow_is_an_error() -> None:
    engine = FakeEngine(max_model_len=12)
    prepared = prepare_step(engine, [HumanMessage("one two")], parse_call_options({}), (), 256)
    assert prepared.max_tokens == 12 - prepared.prompt_tokens
    with pytest.raises(TidalConfigError, match="Shorten the conversation"):
        prepare_step(engine, [HumanMessage("w " * 40)], parse_call_options({}), (), 256)


# ------------------------------------------------------------------- decide
def _features(answer_kind: str = "text") -> StepFeatures:
    return StepFeatures.from_text("What is 2 + 3?", prompt_tokens=20, answer_kind=answer_kind)


def test_grammar_steps_choose_among_sampling_strategies_only() -> None:
    grid = step_grid(AllocationSettings(), max_tokens=64, guided=True)
    assert grid and all(c.strategy in ("single", "best_of_n") for c in grid)
    assert any(c.strategy == "beam" for c in step_grid(AllocationSettings(), 64, guided=False))


def test_a_fixed_strategy_is_the_whole_grid_and_keeps_its_settings() -> None:
    settings = AllocationSettings(strategy=StrategyConfig("best_of_n", n=4, selector="majority"))
    assert step_grid(settings, 64, guided=False) == (settings.strategy,)
    fitted = fit_config(settings, GREEDY, max_tokens=10)
    assert fitted.name == "bo4-majority" and fitted.max_tokens == 10


def test_single_sample_steps_take_the_users_temperature() -> None:
    fitted = fit_config(AllocationSettings(temperature=0.4), GREEDY, max_tokens=64)
    assert fitted.temperature == 0.4 and fitted.max_tokens == 16


def test_trained_predictor_decides_where_its_training_data_covers_the_step() -> None:
    class Trained:
        kind = "trained"
        coverage = {"text": ["greedy", "bo4-majority"], "tool_call": ["greedy"]}

        def covers(self, kind: str, names: list[str]) -> bool:
            return set(names) <= set(self.coverage.get(kind, ()))

        def predict(self, features: StepFeatures, configs: object) -> list[float]:
            raise AssertionError("not called here")

    greedy_bo4 = (GREEDY, StrategyConfig("best_of_n", n=4, selector="majority"))
    assert predictor_for(Trained(), _features("text"), greedy_bo4).kind == "trained"
    assert predictor_for(Trained(), _features("tool_call"), greedy_bo4[:1]).kind == "trained"
    # an unseen configuration or kind of step: the documented prior, recorded as such
    assert predictor_for(Trained(), _features("tool_call"), greedy_bo4).kind == "prior"
    assert predictor_for(Trained(), _features("tool_answer"), greedy_bo4[:1]).kind == "prior"
    grid = step_grid(AllocationSettings(), 64, guided=False)
    assert predictor_for(Trained(), _features("text"), grid).kind == "prior"  # beam unseen


def test_without_an_episode_the_per_call_timeout_is_the_allowance() -> None:
    engine = FakeEngine()
    grid = step_grid(AllocationSettings(), 64, guided=False)
    cost_model = CostModel.default(engine.backend_id)
    decision = decide_step(
        AllocationSettings(timeout=3.0), _features(), grid, None, cost_model,
        PriorAccuracyPredictor(),
    )
    assert decision.allowance_s == 3.0
    unbounded = decide_step(
        AllocationSettings(), _features(), grid, None, cost_model, PriorAccuracyPredictor()
    )
    assert math.isinf(unbounded.allowance_s)


# ------------------------------------------------------------------ execute
def test_engine_errors_are_retried_and_kept_for_the_trace() -> None:
    engine = FakeEngine(fail_times=1, replies=("7",))
    result = asyncio.run(execute(engine, StepInput(prompt="p"), GREEDY, None, None, 2))
    assert result.selected.text == "7"
    assert len(engine.requests) == 2
    assert "injected fault" in result.details["engine_errors"][0]


def test_retries_stop_at_max_retries() -> None:
    engine = FakeEngine(fail_times=5)
    with pytest.raises(TidalEngineError, match="injected fault"):
        asyncio.run(execute(engine, StepInput(prompt="p"), GREEDY, None, None, 1))
    assert len(engine.requests) == 2


def test_a_hanging_engine_is_cut_off_after_the_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(execute_module, "HANG_GRACE_S", 0.2)
    engine = FakeEngine(hang=True)

    async def run() -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(TidalEngineError, match="did not return within"):
            await execute(engine, StepInput(prompt="p"), GREEDY, start + 0.1, None, 0)
        return loop.time() - start

    assert 0.25 <= asyncio.run(run()) < 1.0


class BusyEngine(FakeEngine):
    """Never returns this request, while producing output for others (a loaded
    engine whose own timeout fires late)."""

    @property
    def seconds_since_output(self) -> float:
        return 0.0


def test_a_busy_engine_that_overruns_cuts_the_step_short_without_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(execute_module, "HANG_GRACE_S", 0.2)
    engine = BusyEngine(hang=True)

    async def run() -> tuple[StrategyResult, float]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        result = await execute(engine, StepInput(prompt="p"), GREEDY, start + 0.1, None, 0)
        return result, loop.time() - start

    result, wall = asyncio.run(run())
    assert 0.25 <= wall < 1.0
    assert result.cost.cut_short and result.selected.text == "" and not result.candidates
    outcome = _run(_pipeline(engine, strategy=GREEDY, timeout=0.1), [HumanMessage("hi")])
    assert outcome.record.cut_short and "no usable reply" in (outcome.record.error or "")


# ------------------------------------------------------------------- finish
def _candidate(text: str, finish: str, score: float | None = None) -> Candidate:
    return Candidate(text=text, token_ids=(1,), finish_reason=finish, score=score)


def test_a_complete_candidate_is_preferred_to_a_cut_short_selection() -> None:
    cut = _candidate('{"na', "length", score=0.9)
    done = [_candidate('{"answer": "1"}', "stop", 0.1), _candidate('{"answer": "2"}', "stop", 0.5)]
    result = StrategyResult(
        selected=cut, candidates=(cut, *done), cost=CostRecord(), config=GREEDY
    )
    preferred = prefer_complete(result)
    assert preferred.selected.text == '{"answer": "2"}'
    assert preferred.details["complete_preferred"] is True
    only_cut = StrategyResult(selected=cut, candidates=(cut,), cost=CostRecord(), config=GREEDY)
    assert prefer_complete(only_cut) is only_cut


def test_repeated_calls_are_recognised() -> None:
    call = {"name": "add", "args": {"a": 2, "b": 3}, "id": "c1"}
    history = [
        HumanMessage("add"), AIMessage("", tool_calls=[call]),
        ToolMessage("5", tool_call_id="c1"),
    ]
    assert repeats_answered_call([{"name": "add", "args": {"b": 3, "a": 2}}], history)
    assert not repeats_answered_call([{"name": "add", "args": {"a": 1, "b": 3}}], history)
    assert not repeats_answered_call([call], history[:2])  # no result yet


def test_usage_counts_cached_prompt_tokens() -> None:
    usage = usage_metadata(CostRecord(prompt_tokens=10, cached_prompt_tokens=4,
                                      generated_tokens=3))
    assert usage["total_tokens"] == 13
    assert usage["input_token_details"] == {"cache_read": 4}


# ----------------------------------------------------------------- pipeline
def test_a_text_step_end_to_end(tmp_path) -> None:
    engine = FakeEngine(replies=("The answer is 5.",))
    trace = tmp_path / "trace.jsonl"
    with Episode(deadline_s=30, trace_path=str(trace)) as episode:
        outcome = _run(_pipeline(engine, strategy=GREEDY), [HumanMessage("2+3?")], episode)
    assert outcome.message.content == "The answer is 5."
    meta = outcome.message.response_metadata
    assert meta["model_provider"] == "tidal_agents" and meta["tidal"]["strategy"] == "greedy"
    assert meta["tidal"]["episode_id"] == episode.id
    assert outcome.message.usage_metadata["output_tokens"] == 4
    assert [r.step_index for r in episode.trace] == [0]
    lines = [json.loads(line) for line in trace.read_text().splitlines()]
    steps = [line for line in lines if "step_index" in line]
    assert len(steps) == 1
    record = steps[0]
    assert set(record) >= REQUIRED_RECORD_KEYS
    assert set(record["decision"]) >= REQUIRED_DECISION_KEYS
    assert set(record["spent"]) >= REQUIRED_SPENT_KEYS
    assert record["finish"] == "answer" and record["error"] is None


def test_a_tool_step_returns_the_parsed_call() -> None:
    engine = FakeEngine(replies=('{"name": "add", "arguments": {"a": 2, "b": 3}}',))
    outcome = _run(
        _pipeline(engine, strategy=GREEDY), [HumanMessage("add 2 and 3")], tools=[ADD_TOOL]
    )
    (call,) = outcome.message.tool_calls
    assert call["name"] == "add" and call["args"] == {"a": 2, "b": 3}
    assert outcome.message.response_metadata["finish_reason"] == "tool_calls"
    assert engine.requests[0].guided is not None
    assert outcome.record.finish == "tool_call"


def test_the_loop_guard_asks_for_an_answer_when_a_call_repeats() -> None:
    call = {"name": "add", "args": {"a": 2, "b": 3}, "id": "c1"}
    history = [
        HumanMessage("add 2 and 3"), AIMessage("", tool_calls=[call]),
        ToolMessage("5", tool_call_id="c1"),
    ]
    engine = FakeEngine(
        replies=('{"name": "add", "arguments": {"a": 2, "b": 3}}', '{"answer": "5"}')
    )
    outcome = _run(_pipeline(engine, strategy=GREEDY), history, tools=[ADD_TOOL])
    assert outcome.message.content == "5" and not outcome.message.tool_calls
    assert outcome.record.selection["loop_guard"] is True
    assert outcome.record.spent is not None and outcome.record.spent.engine_calls == 2


def test_a_failed_step_is_recorded_before_the_error_is_raised() -> None:
    engine = FakeEngine(fail_times=10)
    with Episode(deadline_s=30) as episode, pytest.raises(TidalEngineError):
        _run(_pipeline(engine, strategy=GREEDY), [HumanMessage("hi")], episode)
    (record,) = list(episode.trace)
    assert record.error is not None and "injected fault" in record.error


def test_adaptive_steps_record_the_decision_they_made() -> None:
    engine = FakeEngine(replies=("5",))
    system = SystemMessage("Answer briefly.")
    outcome = _run(_pipeline(engine), [system, HumanMessage("What is 2 + 3?")])
    decision = outcome.record.decision
    assert decision["chosen"] == outcome.record.strategy
    assert {c["name"] for c in decision["candidates"]} >= {"greedy"}
    # the reply says which predictor decided, like the trace
    tidal = outcome.message.response_metadata["tidal"]
    assert tidal["predictor_kind"] == decision["predictor_kind"] == "prior"


def test_a_record_read_later_holds_the_step_as_it_ended() -> None:
    # outside an episode the record is built when first read: it must not take the
    # reading time for the step's end, nor the caller's metadata as changed since
    engine = FakeEngine(replies=("5",))
    metadata = {"langgraph_node": "agent", "langgraph_step": 3}
    outcome = asyncio.run(_pipeline(engine, strategy=GREEDY).run(
        [HumanMessage("What is 2 + 3?")], parse_call_options({}), (), None, metadata
    ))
    returned_at = time.time()
    metadata["langgraph_node"] = "changed"
    time.sleep(0.02)
    record = outcome.record
    assert record.started_at <= record.ended_at <= returned_at
    assert (record.node, record.langgraph_step) == ("agent", 3)
    assert record.spent is not None and record.spent.generated_tokens == 1
    assert outcome.record is record

def test_declared_episodes_are_shared_by_key_and_isolated_otherwise() -> None:
    registry = EpisodeRegistry(max_size=4)
    config = {"tidal_deadline_s": 30, "tidal_episode_id": "run-1"}
    first = episode_for_call(config, registry, None)
    assert first is not None and episode_for_call(config, registry, None) is first
    assert episode_for_call({"thread_id": "t"}, registry, None) is None
    once = episode_for_call({"tidal_deadline_s": 30}, registry, None)
    assert once is not None and once is not first and len(registry) == 1


# ------------------------------------------------------- no empty endings
CUT_CALL = '{"name": "add", "argu'
GOOD_CALL = '{"name": "add", "arguments": {"a": 2, "b": 3}}'
BO4 = StrategyConfig("best_of_n", n=4, selector="tool_vote", max_tokens=16)


def _greedy_rescues(request) -> list[str]:
    """Sampled drafts are half-written calls; the greedy fallback writes a whole one."""
    return [GOOD_CALL] if request.temperature == 0 else [CUT_CALL]


def test_adaptive_steps_fall_back_to_greedy_when_nothing_usable_came_back() -> None:
    engine = FakeEngine(replies=_greedy_rescues)
    outcome = _run(_pipeline(engine, grid=(BO4,)), [HumanMessage("add 2 and 3")],
                   tools=[ADD_TOOL])
    (call,) = outcome.message.tool_calls
    assert call["args"] == {"a": 2, "b": 3} and not outcome.message.invalid_tool_calls
    assert outcome.record.selection["fallback"] == "greedy"
    assert outcome.record.error is None
    assert [r.n for r in engine.requests] == [4, 1]


def test_a_fixed_strategy_never_falls_back_and_never_returns_a_fragment() -> None:
    engine = FakeEngine(replies=_greedy_rescues)
    outcome = _run(_pipeline(engine, strategy=BO4), [HumanMessage("add 2 and 3")],
                   tools=[ADD_TOOL])
    message = outcome.message
    assert message.content == "" and not message.tool_calls
    (invalid,) = message.invalid_tool_calls
    assert invalid["args"] == CUT_CALL and "no usable reply" in (invalid["error"] or "")
    assert outcome.record.error is not None and "no usable reply" in outcome.record.error
    assert len(engine.requests) == 1


def test_no_fallback_when_the_episode_has_no_time_left() -> None:
    engine = FakeEngine(replies=_greedy_rescues)
    with Episode(deadline_s=30, on_deadline="fallback") as episode:
        episode.started -= 29.9  # the deadline is all but spent
        outcome = _run(_pipeline(engine, grid=(BO4,)), [HumanMessage("add 2 and 3")],
                       episode, tools=[ADD_TOOL])
    assert outcome.record.selection["fallback"] == "skipped: no time left"
    assert outcome.message.content == "" and outcome.message.invalid_tool_calls
    assert len(engine.requests) == 1


def test_the_loop_guard_also_checks_the_fallbacks_reply() -> None:
    call = {"name": "add", "args": {"a": 2, "b": 3}, "id": "c1"}
    history = [
        HumanMessage("add 2 and 3"), AIMessage("", tool_calls=[call]),
        ToolMessage("5", tool_call_id="c1"),
    ]
    replies = iter([CUT_CALL] * 4 + [GOOD_CALL, '{"answer": "5"}'])
    engine = FakeEngine(replies=lambda request: [next(replies) for _ in range(request.n)])
    outcome = _run(_pipeline(engine, grid=(BO4,)), history, tools=[ADD_TOOL])
    assert outcome.message.content == "5" and not outcome.message.tool_calls
    assert outcome.record.selection["fallback"] == "greedy"
    assert outcome.record.selection["loop_guard"] is True


# ------------------------------------------------------------------ wrap-up
def test_a_step_without_time_for_another_tool_round_trip_answers() -> None:
    engine = FakeEngine(replies=('{"answer": "5"}',))
    with Episode(deadline_s=30) as episode:
        episode.started -= 28.0  # 2 s left, 1.5 s of it above the margin
        outcome = _run(_pipeline(engine, strategy=GREEDY), [HumanMessage("add 2 and 3")],
                       episode, tools=[ADD_TOOL])
    assert outcome.message.content == "5"
    specs = parse_call_options({"tools": [ADD_TOOL]}).specs
    answer_only = tp.reply_grammar(list(specs), tp.ToolChoice("none"), False)
    assert engine.requests[0].guided == answer_only
    assert outcome.record.decision["reason"].startswith("wrap-up:")
    assert outcome.record.selection["wrap_up"]["time_left_s"] < 2.0


def test_with_time_left_tools_stay_callable_and_required_calls_are_never_wrapped_up() -> None:
    engine = FakeEngine(replies=(GOOD_CALL,))
    with Episode(deadline_s=30) as episode:
        outcome = _run(_pipeline(engine, strategy=GREEDY), [HumanMessage("add 2 and 3")],
                       episode, tools=[ADD_TOOL])
        assert outcome.message.tool_calls and "wrap_up" not in outcome.record.selection
        episode.started -= 28.0
        required = _run(_pipeline(engine, strategy=GREEDY), [HumanMessage("add 2 and 3")],
                        episode, tools=[ADD_TOOL], tool_choice="any")
    assert required.message.tool_calls and "wrap_up" not in required.record.selection


# ------------------------------------------------------- tools and budgets
def test_tool_steps_name_their_calls_so_the_episode_learns_tool_time() -> None:
    engine = FakeEngine(replies=(GOOD_CALL,))
    with Episode(deadline_s=30) as episode:
        outcome = _run(_pipeline(engine, strategy=GREEDY), [HumanMessage("add 2 and 3")],
                       episode, tools=[ADD_TOOL])
        assert outcome.record.tool_calls == ["add"]
        _run(_pipeline(engine, strategy=GREEDY), [HumanMessage("again")], episode)
    (event,) = [e for e in episode.trace.events if e.event == "tool_time"]
    assert event.detail["tools"] == ["add"] and event.detail["seconds"] >= 0


def test_a_token_budget_caps_the_samples_tokens() -> None:
    engine = FakeEngine(replies=("one two three four five six seven eight nine ten",))
    with Episode(deadline_s=30, max_episode_tokens=6) as episode:
        outcome = _run(_pipeline(engine, strategy=GREEDY), [HumanMessage("count")], episode)
    assert engine.requests[0].max_tokens == 6
    assert outcome.record.decision["tokens_left"] == 6
    assert episode.tokens_used == 6


def test_a_hung_step_returns_by_the_episodes_deadline_plus_its_bound() -> None:
    engine = FakeEngine(hang=True)

    async def run() -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        with Episode(deadline_s=1.0, expected_steps=1) as episode:
            assert episode.overrun_bound_s == 0.25
            with pytest.raises(TidalEngineError, match="did not return"):
                await _pipeline(engine, strategy=GREEDY).run(
                    [HumanMessage("hi")], parse_call_options({}), (), episode, {}
                )
            return loop.time() - start

    assert asyncio.run(run()) <= 1.0 + 0.25


# ------------------------------------------------------------ under load
def test_a_cut_tool_step_without_time_for_a_round_trip_is_rescued_with_an_answer() -> None:
    """When the time left after a cut step cannot fit a rescued call's tool round and
    the answer after it, the rescue answers under the answer-only grammar: the
    episode still ends with a usable reply."""
    specs = parse_call_options({"tools": [ADD_TOOL]}).specs
    answer_only = tp.reply_grammar(list(specs), tp.ToolChoice("none"), False)
    clock = FakeClock()

    def replies(request) -> list[str]:
        if request.temperature != 0:
            clock.advance(4.5)  # the sampled step overran and was cut
            return [CUT_CALL] * request.n
        return ['{"answer": "5"}'] if request.guided == answer_only else [GOOD_CALL]

    engine = FakeEngine(replies=replies)
    TOOL_TIMES.clear()  # what other tests taught the process about "add"
    try:
        with Episode(deadline_s=30, clock=clock) as episode:
            # a tool round of 25 s every time fits at the start, not after the 4.5 s lost
            episode.observe_tool_time("add", 25.0)
            episode.observe_tool_time("add", 25.0)
            outcome = _run(_pipeline(engine, grid=(BO4,)), [HumanMessage("add 2 and 3")],
                           episode, tools=[ADD_TOOL])
    finally:
        TOOL_TIMES.clear()
    assert "wrap_up" not in outcome.record.selection
    assert outcome.message.content == "5" and not outcome.message.tool_calls
    assert outcome.record.selection["fallback"] == "greedy, answer only"
    assert outcome.record.error is None


def test_a_cut_required_call_without_time_for_its_round_trip_is_rescued_with_an_answer(
) -> None:
    """A call was required, but after the 4.5 s lost no call can leave time for the
    25 s tool and the answer: a call now would carry the episode past its deadline,
    so the cut step's rescue answers instead."""
    specs = parse_call_options({"tools": [ADD_TOOL]}).specs
    answer_only = tp.reply_grammar(list(specs), tp.ToolChoice("none"), False)
    clock = FakeClock()

    def replies(request) -> list[str]:
        if request.temperature != 0:
            clock.advance(4.5)
            return [CUT_CALL] * request.n
        return ['{"answer": "5"}'] if request.guided == answer_only else [GOOD_CALL]

    engine = FakeEngine(replies=replies)
    TOOL_TIMES.clear()
    try:
        with Episode(deadline_s=30, clock=clock) as episode:
            episode.observe_tool_time("add", 25.0)
            episode.observe_tool_time("add", 25.0)
            outcome = _run(_pipeline(engine, grid=(BO4,)), [HumanMessage("add 2 and 3")],
                           episode, tools=[ADD_TOOL], tool_choice="required")
    finally:
        TOOL_TIMES.clear()
    assert outcome.message.content == "5" and not outcome.message.tool_calls
    assert outcome.record.selection["fallback"] == "greedy, answer only"


def _late_call_episode(clock: FakeClock, overrun_s: float):
    """A step whose sampled call comes back after `overrun_s` of a 30 s episode whose
    "add" tool takes 25 s every time."""
    specs = parse_call_options({"tools": [ADD_TOOL]}).specs
    answer_only = tp.reply_grammar(list(specs), tp.ToolChoice("none"), False)

    def replies(request) -> list[str]:
        if request.guided == answer_only:
            return ['{"answer": "5"}']
        clock.advance(overrun_s)
        return [GOOD_CALL] * request.n

    return FakeEngine(replies=replies)


@pytest.mark.parametrize(("overrun_s", "answered"), [(4.5, True), (1.0, False), (28.9, False)])
def test_a_call_too_late_for_its_tool_round_is_answered_instead(
    overrun_s: float, answered: bool
) -> None:
    """4.5 s lost: 24.5 s cannot fit the 25 s tool and an answer, so the step answers;
    1 s lost: the call fits and stands; 28.9 s lost: no time even to answer, the call
    stands (the tool may be quicker this time)."""
    clock = FakeClock()
    engine = _late_call_episode(clock, overrun_s)
    TOOL_TIMES.clear()
    try:
        with Episode(deadline_s=30, clock=clock) as episode:
            episode.observe_tool_time("add", 25.0)
            episode.observe_tool_time("add", 25.0)
            outcome = _run(_pipeline(engine, grid=(BO4,)), [HumanMessage("add 2 and 3")],
                           episode, tools=[ADD_TOOL])
    finally:
        TOOL_TIMES.clear()
    late = outcome.record.selection.get("late_call", "")
    if answered:
        assert outcome.message.content == "5" and not outcome.message.tool_calls
        assert late.endswith("answered instead")
    else:
        assert [c["name"] for c in outcome.message.tool_calls] == ["add"]
        assert late == "" if overrun_s < 4 else late.endswith("no time to answer")


def test_a_call_that_fits_a_typical_tool_round_stands() -> None:
    """The tool took 22 s, then 24 s: a typical round (22.6 s) and the answer fit the
    24.5 s left, a slow one (26.6 s) would not; the call stands."""
    clock = FakeClock()
    engine = _late_call_episode(clock, 4.5)
    TOOL_TIMES.clear()
    try:
        with Episode(deadline_s=30, clock=clock) as episode:
            episode.observe_tool_time("add", 22.0)
            episode.observe_tool_time("add", 24.0)
            assert episode.tool_round_upper_s(True) > 24.5 > episode.tool_time_s("add")
            outcome = _run(_pipeline(engine, grid=(BO4,)), [HumanMessage("add 2 and 3")],
                           episode, tools=[ADD_TOOL])
    finally:
        TOOL_TIMES.clear()
    assert [c["name"] for c in outcome.message.tool_calls] == ["add"]
    assert "late_call" not in outcome.record.selection


def test_a_fixed_strategy_keeps_its_late_call() -> None:
    clock = FakeClock()
    engine = _late_call_episode(clock, 4.5)
    TOOL_TIMES.clear()
    try:
        with Episode(deadline_s=30, clock=clock) as episode:
            episode.observe_tool_time("add", 25.0)
            episode.observe_tool_time("add", 25.0)
            outcome = _run(_pipeline(engine, strategy=BO4), [HumanMessage("add 2 and 3")],
                           episode, tools=[ADD_TOOL])
    finally:
        TOOL_TIMES.clear()
    assert [c["name"] for c in outcome.message.tool_calls] == ["add"]


def test_when_nothing_fits_the_step_may_use_what_the_episode_can_spare() -> None:
    engine = FakeEngine(replies=("5",))
    with Episode(deadline_s=30, expected_steps=3) as episode:
        episode.started -= 27.0  # 3 s left: a share of ~0.8 s, which greedy does not fit
        outcome = _run(_pipeline(engine, strategy=StrategyConfig(
            "single", temperature=0.0, max_tokens=32)), [HumanMessage("2+3?")], episode)
    decision = outcome.record.decision
    assert decision["any_fits"] is False
    assert "allowance stretched" in decision["reason"]
    # no tools: the whole time above the margin, not the share
    assert decision["allowance_s"] == pytest.approx(3.0 - episode.safety_margin_s, abs=0.05)


def test_steps_on_their_way_to_the_engine_count_as_load() -> None:
    from tidal_agents.allocation.load import StepLedger, engine_load

    engine = FakeEngine()
    ledger = StepLedger()
    mine = ledger.enter(100)
    other = ledger.enter(250)
    engine.in_flight_sequences, engine.queued_prompt_tokens = 8, 40
    load = engine_load(engine, ledger, mine)
    assert (load.concurrent_sequences, load.queued_prompt_tokens) == (9, 290)
    ledger.leave(other)
    ledger.leave(other)  # leaving twice is harmless
    assert engine_load(engine, ledger, mine).queued_prompt_tokens == 40
    ledger.leave(mine)
    assert len(ledger) == 0


def test_a_step_leaves_the_ledger_whatever_happens() -> None:
    from tidal_agents.allocation.load import ledger_for

    class BrokenPredictor(PriorAccuracyPredictor):
        def predict(self, features: StepFeatures, configs: object) -> list[float]:
            raise RuntimeError("the predictor broke while deciding")

    engine = FakeEngine()
    pipeline = _pipeline(engine)
    pipeline.predictor = BrokenPredictor()
    with pytest.raises(RuntimeError, match="predictor broke"):
        _run(pipeline, [HumanMessage("hi")])  # raised before the request was submitted
    assert len(ledger_for(engine)) == 0 and engine.requests == []


def _cut_then_slow_greedy(request) -> list[str]:
    return ["5"] if request.temperature == 0 else [CUT_CALL] * request.n


def test_the_rescue_is_tried_with_a_second_left_even_when_predicted_not_to_fit() -> None:
    for seconds_left, tried in ((2.6, True), (1.2, False)):
        engine = FakeEngine(replies=_cut_then_slow_greedy)
        pipeline = _pipeline(engine, grid=(BO4,))
        pipeline.cost_model.load_factor = 10.0  # greedy predicted far beyond what is left
        with Episode(deadline_s=30) as episode:
            episode.started -= 30 - seconds_left  # about seconds_left - margin above it
            outcome = _run(pipeline, [HumanMessage("add 2 and 3")], episode, tools=[ADD_TOOL])
        fallback = outcome.record.selection["fallback"]
        assert (fallback != "skipped: no time left") is tried, (seconds_left, fallback)


def test_outside_an_episode_the_rescue_ends_by_the_calls_timeout() -> None:
    engine = FakeEngine(replies=_cut_then_slow_greedy)
    _run(_pipeline(engine, grid=(BO4,), timeout=5.0), [HumanMessage("add 2 and 3")],
         tools=[ADD_TOOL])
    rescue = engine.requests[-1]
    assert rescue.temperature == 0 and rescue.timeout_s is not None
    assert rescue.timeout_s <= 5.0


def test_queued_prompts_raise_the_predicted_latency() -> None:
    model = CostModel.default()
    idle = StepFeatures(prompt_tokens=200)
    busy = StepFeatures(prompt_tokens=200, queued_prompt_tokens=4000)
    extra = model.predict(GREEDY, busy).latency_s - model.predict(GREEDY, idle).latency_s
    assert extra == pytest.approx(4000 * model.params.prefill_s_per_token)


def test_an_answer_cut_off_by_time_is_rescued_and_otherwise_recorded_as_truncated() -> None:
    def replies(request) -> list[str]:
        return ["The answer is 5."] if request.temperature == 0 else ["The answer is"] * request.n

    def cut_sampled(engine: FakeEngine):
        original = engine._sample

        def sample(i, text, request, fraction):
            made = original(i, text, request, fraction)
            return made if request.temperature == 0 else replace(made, finish_reason="timeout")
        engine._sample = sample  # type: ignore[method-assign]
        return engine

    bo4 = StrategyConfig("best_of_n", n=4, selector="majority", max_tokens=16)
    adaptive = _run(_pipeline(cut_sampled(FakeEngine(replies=replies)), grid=(bo4,)),
                    [HumanMessage("2+3?")])
    assert adaptive.message.content == "The answer is 5."
    assert adaptive.record.selection["fallback"] == "greedy"
    assert adaptive.record.finish == "answer"
    fixed = _run(_pipeline(cut_sampled(FakeEngine(replies=replies)), strategy=bo4),
                 [HumanMessage("2+3?")])
    assert fixed.message.content == "The answer is"
    assert fixed.record.finish == "truncated"
    assert not is_usable_reply(fixed.message)


def test_other_open_episodes_count_as_load() -> None:
    from tidal_agents.episode import open_episodes

    engine = FakeEngine(replies=("5",))
    base = open_episodes()
    others = [Episode(deadline_s=30) for _ in range(3)]
    with others[0], others[1].activate(), others[2], Episode(deadline_s=30) as mine:
        assert open_episodes() == base + 4
        outcome = _run(_pipeline(engine, strategy=GREEDY), [HumanMessage("2+3?")], mine)
    assert outcome.record.features["concurrent_sequences"] >= 3
    assert open_episodes() == base


def test_an_episode_declared_per_call_does_not_discount_an_open_one() -> None:
    # an episode from RunnableConfig keys is not open (no ``with`` block): the open
    # episodes are all others
    import contextvars

    from tidal_agents.episode import open_episodes

    engine = FakeEngine(replies=("5",))
    declared = Episode(deadline_s=30)
    elsewhere, other = contextvars.copy_context(), Episode(deadline_s=30)
    elsewhere.run(other.__enter__)
    try:
        others = open_episodes()
        outcome = _run(_pipeline(engine, strategy=GREEDY), [HumanMessage("2+3?")], declared)
    finally:
        elsewhere.run(other.__exit__, None, None, None)
    assert others >= 1
    assert outcome.record.features["concurrent_sequences"] == others


def test_announce_budget_ends_the_conversation_with_the_budget_left() -> None:
    clock = FakeClock()
    engine = FakeEngine(replies=("5",))
    with Episode(deadline_s=20, max_episode_tokens=500, announce_budget=True,
                 clock=clock) as episode:
        clock.advance(5.0)
        _run(_pipeline(engine, strategy=StrategyConfig("single", temperature=0.0,
                                                        max_tokens=8)),
             [HumanMessage("2+3?")], episode)
    prompt = engine.requests[0].prompt
    note = "system: Budget: 14.0 s left of 20 s, 500 tokens left."
    assert note in prompt and prompt.index("user: 2+3?") < prompt.index(note)
    (event,) = [e for e in episode.trace.events if e.event == "budget_note"]
    assert event.detail["note"].startswith("Budget: 14.0 s left of 20 s")


def test_without_announce_budget_the_prompt_has_no_note() -> None:
    engine = FakeEngine(replies=("5",))
    with Episode(deadline_s=20) as episode:
        _run(_pipeline(engine, strategy=StrategyConfig("single", temperature=0.0,
                                                        max_tokens=8)),
             [HumanMessage("2+3?")], episode)
    assert "Budget:" not in engine.requests[0].prompt
