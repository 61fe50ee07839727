"""TidalChatModel on the real engine: tools, sync/async, batch, episodes, examples."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import matplotlib.image
import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import tool

from tidal_agents import TidalChatModel
from tidal_agents.errors import TidalConfigError
from tidal_agents.integrations.langchain_middleware import ToolFirstMiddleware
from tidal_agents.types import StrategyConfig

pytestmark = pytest.mark.engine


@tool
def multiply(a: float, b: float) -> float:
    """Multiply two numbers."""
    return a * b


@tool
def get_weather(city: str) -> str:
    """Get the weather in a city."""
    return f"It is sunny in {city}."


@pytest.fixture(scope="module")
def model() -> TidalChatModel:
    return TidalChatModel(max_tokens=48)


def test_bind_tools_invoke_sync_and_async(model: TidalChatModel) -> None:
    llm = model.bind_tools([multiply, get_weather], tool_choice="any")
    msg = llm.invoke("What is the weather in Paris?")
    assert isinstance(msg, AIMessage)
    assert len(msg.tool_calls) == 1
    call = msg.tool_calls[0]
    assert call["name"] in {"multiply", "get_weather"}
    assert call["id"]
    # the call is valid against the tool's own schema: it runs
    result = {"multiply": multiply, "get_weather": get_weather}[call["name"]].invoke(call)
    assert isinstance(result, ToolMessage)
    assert msg.usage_metadata and msg.usage_metadata["output_tokens"] > 0
    assert msg.response_metadata["model_provider"] == "tidal_agents"
    assert msg.response_metadata["tidal"]["strategy"]


async def test_bind_tools_async_named_choice(model: TidalChatModel) -> None:
    llm = model.bind_tools([multiply, get_weather], tool_choice="multiply")
    msg = await llm.ainvoke("What is 6 times 7?")
    assert [c["name"] for c in msg.tool_calls] == ["multiply"]
    assert set(msg.tool_calls[0]["args"]) == {"a", "b"}


def test_tool_results_round_trip(model: TidalChatModel) -> None:
    llm = model.bind_tools([multiply])
    first = AIMessage("", tool_calls=[{"name": "multiply", "args": {"a": 6, "b": 7}, "id": "c1"}])
    msg = llm.invoke([("user", "What is 6 times 7?"), first,
                      ToolMessage("42.0", tool_call_id="c1")])
    assert isinstance(msg, AIMessage)
    assert msg.content or msg.tool_calls


def test_usage_counts_every_sample(model: TidalChatModel) -> None:
    fixed = TidalChatModel(max_tokens=16, strategy=StrategyConfig("best_of_n", n=4,
                                                                 selector="majority",
                                                                 max_tokens=16))
    # a prompt most samples do not finish in 16 tokens; one may still stop early
    msg = fixed.invoke("Write a long story about the sea, in many chapters.")
    tidal = msg.response_metadata["tidal"]
    assert tidal["strategy"].startswith("bo4")
    usage = msg.usage_metadata
    assert usage is not None
    # one sample writes at most 16 tokens, so more than 16 means samples are summed
    assert 16 < usage["output_tokens"] <= 4 * 16
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


def test_batch_of_8_runs_concurrently(model: TidalChatModel) -> None:
    llm = model.engine._llm
    peak = 0
    stop = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, llm.get_num_unfinished_requests())
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        out = model.batch([f"Say the number {i}." for i in range(8)])
    finally:
        stop.set()
        watcher.join()
    assert len(out) == 8 and all(isinstance(m, AIMessage) for m in out)
    assert peak >= 4, f"at most {peak} requests were in flight at once"


def test_bad_input_is_rejected_before_generation(model: TidalChatModel) -> None:
    with pytest.raises(TidalConfigError, match="not a bound tool"):
        model.bind_tools([multiply], tool_choice="divide")
    with pytest.raises(TidalConfigError, match="invalid parameter schema"):
        model.bind_tools([{"type": "function", "function": {
            "name": "f", "description": "x", "parameters": {"type": "nonsense"}}}])
    with pytest.raises(TidalConfigError, match="context"):
        model.invoke("word " * 10_000)
    with pytest.raises(ValueError, match="lambda_tokens=nan"):
        TidalChatModel(lambda_tokens=float("nan"))
    with pytest.raises(TidalConfigError, match="Unsupported content block"):
        model.invoke([("user", [{"type": "image", "url": "http://example.com/x.png"}])])


def test_create_agent_episode_with_deadline(tmp_path: Path) -> None:
    model = TidalChatModel(max_tokens=48)
    agent = create_agent(model=model, tools=[multiply],
                         system_prompt="Use the multiply tool, then answer.",
                         middleware=[ToolFirstMiddleware()])
    trace_path = tmp_path / "trace.jsonl"
    deadline = 20.0
    with model.episode(deadline_s=deadline, trace_path=str(trace_path)) as ep:
        result = agent.invoke({"messages": [("user", "What is 12 times 7?")]},
                              {"recursion_limit": 6})
        elapsed = ep.elapsed_s()
    assert elapsed <= deadline + ep.overrun_bound_s
    steps = list(ep.trace)
    model_calls = [m for m in result["messages"] if isinstance(m, AIMessage)]
    assert len(steps) == len(model_calls) >= 2
    assert [s.step_index for s in steps] == list(range(len(steps)))
    assert all(s.node == "model" for s in steps)
    lines = [json.loads(line) for line in trace_path.read_text().splitlines()]
    assert len([line for line in lines if "event" not in line]) == len(steps)
    # the time between the tool call and the next step is the tool's, and is recorded
    events = [line for line in lines if "event" in line]
    assert [e["event"] for e in events] == ["tool_time"] * (len(steps) - 1)
    assert events[0]["detail"]["tools"] == ["multiply"]
    png = tmp_path / "timeline.png"
    ep.trace.plot(png)
    assert matplotlib.image.imread(str(png)).shape[0] > 100
    df = ep.trace.to_dataframe()
    assert len(df) == len(steps)


def test_custom_events_reach_callbacks(model: TidalChatModel) -> None:
    from langchain_core.callbacks import BaseCallbackHandler

    seen: list[dict[str, Any]] = []

    class Handler(BaseCallbackHandler):
        def on_custom_event(self, name: str, data: Any, **kwargs: Any) -> None:
            if name == "tidal_step":
                seen.append(data)

    model.invoke("Hi", config={"callbacks": [Handler()]})
    assert len(seen) == 1 and "decision" in seen[0]


def test_examples_run_end_to_end(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    root = Path(__file__).resolve().parents[2] / "examples"
    monkeypatch.syspath_prepend(str(root))  # as when an example runs as a script
    for name in ("calculator_agent", "langgraph_agent", "budgeted_agent"):
        spec = importlib.util.spec_from_file_location(name, root / f"{name}.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        out = module.run(deadline_s=60.0)
        messages = out["messages"]
        tool_results = [m for m in messages if isinstance(m, ToolMessage)]
        assert tool_results, f"{name}: no tool was executed"
        final = messages[-1]
        assert isinstance(final, AIMessage) and not final.tool_calls and final.content, name
