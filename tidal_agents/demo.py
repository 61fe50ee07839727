"""`tidal-agents demo`: one agent episode with a deadline on the embedded model."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from langchain.agents import create_agent
from rich.console import Console

from tidal_agents.integrations.langchain_middleware import ToolFirstMiddleware
from tidal_agents.trace.outcomes import trace_summary


def run_demo(deadline_s: float = 60.0, trace_dir: str | None = None) -> int:
    from tidal_agents.chat_model import TidalChatModel
    from tidal_agents.evaluation.agent_tasks import langchain_tools

    console = Console()
    out_dir = Path(trace_dir or tempfile.mkdtemp(prefix="tidal-demo-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    console.print("[bold]Starting the engine[/bold] (embedded SmolLM2-135M-Instruct on vLLM)...")
    model = TidalChatModel(max_tokens=64)
    t0 = time.perf_counter()
    _ = model.engine
    console.print(f"engine ready in {time.perf_counter() - t0:.1f} s")
    agent = create_agent(
        model=model,
        tools=langchain_tools(("multiply", "km_to_miles")),
        system_prompt="Use a tool to compute, then give the answer.",
        # a 135M model answers from memory unless the first step must call a tool
        middleware=[ToolFirstMiddleware()],
    )
    question = "What is 12 times 7?"
    console.print(f"[bold]Episode[/bold]: {question!r} with a {deadline_s:g} s deadline")
    jsonl = out_dir / "trace.jsonl"
    t0 = time.perf_counter()
    with model.episode(deadline_s=deadline_s, trace_path=str(jsonl)) as ep:
        request: Any = {"messages": [("user", question)]}
        result = agent.invoke(request, {"recursion_limit": 8})
    elapsed = time.perf_counter() - t0
    for m in result["messages"]:
        m.pretty_print()
    ep.trace.print()
    png = out_dir / "timeline.png"
    ep.trace.plot(png)
    records = ep.trace.records
    summary = trace_summary(records, deadline_s, ep.trace.started_at)
    console.print(
        f"episode took {elapsed:.1f} s of {deadline_s:g} s; {len(records)} steps; "
        f"outcome: {summary['outcome']}; trace: {jsonl}; timeline: {png}"
    )
    first = records[0] if records else None
    if first is not None and first.spent is not None and first.predicted_latency_s:
        console.print(
            f"step 0: predicted {first.predicted_latency_s:.2f} s, took "
            f"{first.spent.wall_s:.2f} s"
        )
    return 0
