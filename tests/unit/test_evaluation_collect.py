"""Outcome collection through the chat model's step path, on the fake engine (no vLLM)."""

from __future__ import annotations

import asyncio
import json
import random
import re
from pathlib import Path

import pytest
from fakes import FakeEngine

from tidal_agents import tool_protocol as tp
from tidal_agents.engine.types import GenerationRequest
from tidal_agents.errors import TidalConfigError
from tidal_agents.evaluation import collect
from tidal_agents.evaluation.agent_tasks import agent_tasks
from tidal_agents.evaluation.collect import CollectSettings, LatencyMeasurement, LatencyModel
from tidal_agents.evaluation.step_tasks import (
    agent_steps,
    grade,
    planned_calls,
    query_group,
    text_steps,
)
from tidal_agents.evaluation.tasks import graded_arithmetic
from tidal_agents.step.prepare import step_features


def test_latency_model_fit() -> None:
    ms = [LatencyMeasurement("q", n, 0.7, 0.3 + 0.002 * p + length * (0.02 + 0.001 * n),
                             length, n * length, p)
          for n in (1, 2, 4, 8, 16) for length in (10, 50, 90) for p in (40, 200)]
    model = LatencyModel.fit(ms)
    assert model.predict(1, 50, 40) == pytest.approx(0.3 + 0.08 + 50 * 0.021, rel=1e-3)
    assert model.predict(16, 90, 200) == pytest.approx(0.3 + 0.4 + 90 * 0.036, rel=1e-3)
    assert model.predict(8, 50) > model.predict(2, 50) > model.predict(1, 40)
    with pytest.raises(TidalConfigError, match="at least 3"):
        LatencyModel.fit(ms[:2])


def test_settings_and_task_specs() -> None:
    with pytest.raises(TidalConfigError, match="power of two"):
        CollectSettings(n_max=12)
    assert collect.parse_task_spec("arith:30") == ("arith", 30)
    assert collect.parse_task_spec("agent") == ("agent", collect.SOURCES["agent"])
    with pytest.raises(TidalConfigError, match="allowed names"):
        collect.parse_task_spec("mmlu:3")
    steps = collect.load_steps(["arith:6", "agent:3"])
    # an agent task: call and answer steps, each under tool_choice auto and as
    # ToolFirstMiddleware asks ("any" on the call, "none" on the answer)
    assert len(steps) == 6 + 4 * 3 and len({s.id for s in steps}) == 18
    # interleaved: every kind appears early in the run
    assert {s.kind for s in steps[:6]} == {"text", "tool_call", "tool_answer"}


def test_agent_steps_plans_and_grading() -> None:
    steps = agent_steps(9, seed=0)
    kinds = {s.kind for s in steps}
    assert kinds == {"tool_call", "tool_answer"} and len(steps) == 36
    choices = {(s.kind, s.tool_choice) for s in steps}
    assert choices == {("tool_call", None), ("tool_call", "any"), ("tool_answer", None),
                       ("tool_answer", "none")}
    # the four steps of one task are one group for held-out splits and folds
    assert len({query_group(s.id) for s in steps}) == 9
    assert query_group("agent-s0-004-answer-none") == "agent-s0-004"
    assert query_group("arith-s0-003") == "arith-s0-003"
    # every other task binds a distractor tool
    assert any("distractor" in s.difficulty for s in steps)
    assert any("plain" in s.difficulty for s in steps)
    for task in agent_tasks(9, seed=0):
        calls = planned_calls(task)
        assert calls[-1][2] == pytest.approx(task.gold)
    call = next(s for s in steps if s.kind == "tool_call")
    assert call.expected_call is not None
    name, args = call.expected_call
    right = tp.ParsedReply("", [{"name": name, "args": args, "id": "x", "type": "tool_call"}])
    wrong = tp.ParsedReply("", [{"name": name, "args": {k: 1 for k in args}, "id": "x",
                                 "type": "tool_call"}])
    assert grade(call, right) and not grade(call, wrong)
    assert not grade(call, tp.ParsedReply(f"The answer is {call.gold}", []))
    answer = next(s for s in steps if s.kind == "tool_answer")
    assert grade(answer, tp.ParsedReply(f"It is {answer.gold}.", []))
    assert not grade(answer, right)
    text = text_steps(graded_arithmetic(2, seed=0))[0]
    assert grade(text, tp.ParsedReply(f"So the answer is {text.gold}.", []))


def _engine() -> FakeEngine:
    engine = FakeEngine()
    engine.replies = lambda request: _replies(engine, request)
    return engine


def _replies(engine: FakeEngine, request: GenerationRequest) -> list[str]:
    """Text prompts: right on even samples, wrong on odd ones (beam continuations too);
    tool prompts: the right call; after a tool result: the result stated."""
    prompt = request.prompt
    if isinstance(prompt, tuple):  # beam search continues token ids
        prompt = engine.tokenizer.decode(prompt)
    if request.guided is None:
        a, op, b = re.search(r"(\d+) ([+*]) (\d+)", prompt).groups()  # type: ignore[union-attr]
        right = int(a) + int(b) if op == "+" else int(a) * int(b)
        return [f"The answer is {right if i % 2 == 0 else right + 1}." for i in range(request.n)]
    result = re.findall(r"is (\d+(?:\.\d+)?)\.", prompt)
    if "The result of" in prompt and result:
        return [json.dumps({"answer": f"It is {result[-1]}."})]
    a, b = re.search(r"What is (\d+) (?:times|plus) (\d+)", prompt).groups()  # type: ignore[union-attr]
    name = "multiply" if "times" in prompt.split("user")[-1] else "add"
    return [json.dumps({"name": name, "arguments": {"a": int(a), "b": int(b)}})]


def test_collect_writes_rows_through_the_step_path_and_resumes(tmp_path: Path) -> None:
    from tidal_agents.evaluation.agent_tasks import AGENT_TASK_KINDS

    assert "multiply-only" in AGENT_TASK_KINDS
    texts = text_steps(graded_arithmetic(4, seed=0, kinds=["add-1d", "mul-1d"]))
    agents = [s for s in agent_steps(9, seed=0)
              if s.difficulty.split("/")[0] in ("multiply-only", "add-only")]
    steps = texts[:3] + agents
    out = tmp_path / "o.jsonl"
    settings = CollectSettings(n_max=4, max_tokens=16, latency_items=1, concurrency=3)
    engine = _engine()
    summary = asyncio.run(collect.collect(engine, steps, out, settings, show=False))
    assert summary["collected"] == len(steps)
    rows = collect.read_rows(out)
    by = {(r["query_id"], r["config"]): r for r in rows}
    first = texts[0].id
    # the text grid holds beam; a tool step's grid does not (the chat model never runs it)
    assert {c for q, c in by if q == first} == {
        "greedy", "bo2-majority", "bo4-majority", "beam2", "beam4"}
    assert by[(first, "greedy")]["soft_label"] == 1.0  # greedy is sample 0: right
    # a 2-2 tie among 4 samples goes to the first answer seen: always the right one here
    assert by[(first, "bo4-majority")]["soft_label"] == 1.0
    assert 0.0 <= by[(first, "bo2-majority")]["soft_label"] <= 1.0
    assert by[(first, "beam2")]["latency_source"] == "measured"
    for s in agents:
        kind = by[(s.id, "greedy")]["kind"]
        assert kind == s.kind and by[(s.id, "greedy")]["features"]["answer_kind"] == kind
        assert by[(s.id, "greedy")]["soft_label"] == 1.0
        assert (s.id, "beam2") not in by
    # a step's tool_choice is rendered and recorded as the chat model's
    for s in agents:
        features = by[(s.id, "greedy")]["features"]
        assert features["tool_choice_required"] == (s.tool_choice == "any")
        assert features["tool_choice_none"] == (s.tool_choice == "none")
    # the features are the chat model's own (recomputed from the prepared step)
    prepared = collect.prepare(engine, agents[1], settings)
    assert by[(agents[1].id, "greedy")]["features"] == step_features(
        prepared, agents[1].step_index, 0).to_dict()
    assert all(r["latency_s"] > 0 and r["generated_tokens"] > 0 for r in rows)
    assert collect.side_file(out, "latency").exists() and collect.side_file(out, "samples").exists()
    again = asyncio.run(collect.collect(engine, [*steps, texts[3]], out, settings, show=False))
    assert again["skipped"] == len(steps) and again["collected"] == 1


def test_bootstrap_is_deterministic_per_step() -> None:
    steps = text_steps(graded_arithmetic(1, seed=0, kinds=["add-1d"]))
    settings = CollectSettings(n_max=4, max_tokens=16, latency_items=1, beams=False)
    engine = _engine()
    got = asyncio.run(collect.generate_step(engine, steps[0], settings))
    lat = LatencyModel(0.1, 0.01, 0.001)
    a = collect.rows_from_samples(got, settings, lat, random.Random("0:x"), "fake")
    b = collect.rows_from_samples(got, settings, lat, random.Random("0:x"), "fake")
    assert [r.soft_label for r in a] == [r.soft_label for r in b]
    assert [r.config for r in a] == ["greedy", "bo2-majority", "bo4-majority"]


def test_task_file_steps_and_their_grading(tmp_path: Path) -> None:
    from fakes import ADD_TOOL

    from tidal_agents.evaluation.step_tasks import file_steps

    tasks = [
        {"prompt": "What is 2 + 3?", "gold": "5", "tag": "mine"},
        {"id": "call", "prompt": "Add 2 and 3.", "tools": [ADD_TOOL],
         "gold": {"name": "add", "arguments": {"a": 2, "b": 3}}},
        {"id": "answer", "tools": ["multiply"], "gold": 84, "messages": [
            {"role": "user", "content": "What is 12 times 7?"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"id": "c1", "name": "multiply", "arguments": {"a": 12, "b": 7}}]},
            {"role": "tool", "content": "84.0", "tool_call_id": "c1"}]},
        {"prompt": "Capital of France?", "gold": "Paris"},
    ]
    path = tmp_path / "tasks.jsonl"
    path.write_text("\n".join(json.dumps(t) for t in tasks) + "\n")
    text, call, answer, words = file_steps(path)
    assert (text.kind, call.kind, answer.kind, words.kind) == (
        "text", "tool_call", "tool_answer", "text")
    assert text.difficulty == "mine" and answer.step_index == 1
    assert grade(text, tp.ParsedReply("The answer is 5.", []))
    assert grade(words, tp.ParsedReply("The answer is paris.", []))
    good = {"name": "add", "args": {"b": 3, "a": 2}, "id": "x", "type": "tool_call"}
    assert grade(call, tp.ParsedReply("", [good]))
    assert not grade(call, tp.ParsedReply("", [{**good, "args": {"a": 2, "b": 4}}]))
    assert grade(answer, tp.ParsedReply("12 times 7 is 84.", []))
    # prepared as the chat model prepares it: the file's tool grammar and system prompt
    prepared = collect.prepare(_engine(), call, CollectSettings())
    assert prepared.tool_grammar and "add" in prepared.prompt
    (tmp_path / "bad.jsonl").write_text(json.dumps({"prompt": "x"}) + "\n")
    with pytest.raises(TidalConfigError, match="'gold'"):
        file_steps(tmp_path / "bad.jsonl")


def test_task_file_tool_choice(tmp_path: Path) -> None:
    """A task file states the tool choice its agent binds; it reaches the prepared step."""
    from fakes import ADD_TOOL

    from tidal_agents.evaluation.step_tasks import file_steps

    call = {"prompt": "Add 2 and 3.", "tools": [ADD_TOOL],
            "gold": {"name": "add", "arguments": {"a": 2, "b": 3}}}
    path = tmp_path / "tasks.jsonl"
    path.write_text("".join(json.dumps({**call, "tool_choice": c}) + "\n"
                            for c in ("auto", "any", "required", "none")))
    steps = file_steps(path)
    assert [s.tool_choice for s in steps] == [None, "any", "any", "none"]
    modes = [collect.prepare(_engine(), s, CollectSettings()).options.choice.mode for s in steps]
    assert modes == ["auto", "required", "required", "none"]
    for bad in ({**call, "tool_choice": "always"},
                {"prompt": "What is 2 + 3?", "gold": "5", "tool_choice": "any"}):
        path.write_text(json.dumps(bad) + "\n")
        with pytest.raises(TidalConfigError, match="tool_choice=.*allowed are"):
            file_steps(path)
