"""Outcome collection against the real engine and the embedded model (small)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tidal_agents.engine import LocalVLLMEngine
from tidal_agents.evaluation import collect

pytestmark = pytest.mark.engine


async def test_collect_real_engine(engine: LocalVLLMEngine, tmp_path: Path) -> None:
    steps = collect.load_steps(["arith:1", "agent:1"], seed=11)
    assert {s.kind for s in steps} == {"text", "tool_call", "tool_answer"}
    out = tmp_path / "o.jsonl"
    settings = collect.CollectSettings(n_max=4, max_tokens=24, latency_items=1, concurrency=3)
    summary = await collect.collect(engine, steps, out, settings, show=False)
    assert summary["collected"] == 1 + 4
    rows = collect.read_rows(out)
    configs = {s.id: {r["config"] for r in rows if r["query_id"] == s.id} for s in steps}
    for s in steps:
        expected = {"greedy", "bo2-majority", "bo4-majority"}
        assert configs[s.id] == (expected | {"beam2", "beam4"} if s.kind == "text" else expected)
        prompt_tokens = collect.prepare(engine, s, settings).prompt_tokens
        for r in (r for r in rows if r["query_id"] == s.id):
            assert 0.0 <= r["soft_label"] <= 1.0 and r["latency_s"] > 0
            assert r["prompt_tokens"] == prompt_tokens and r["kind"] == s.kind
            assert r["features"]["answer_kind"] == s.kind
    samples = collect.read_rows(collect.side_file(out, "samples"))
    assert all(len(rec["samples"]) == 4 for rec in samples)
    assert all(1 <= x["tokens"] <= 24 for rec in samples for x in rec["samples"])
    latency = collect.read_rows(collect.side_file(out, "latency"))
    assert {m["n"] for m in latency} == {1, 2, 4}
    assert all(m["wall_s"] > 0 and m["longest_tokens"] >= 1 for m in latency)
