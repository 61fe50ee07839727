"""Outcome collection against the real engine and the embedded model (small)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tidal_agents.engine import LocalVLLMEngine
from tidal_agents.evaluation import collect
from tidal_agents.evaluation.tasks import graded_arithmetic

pytestmark = pytest.mark.engine


async def test_collect_real_engine(engine: LocalVLLMEngine, tmp_path: Path) -> None:
    items = graded_arithmetic(3, seed=11, kinds=["add-1d", "mul-1d", "add-3d"])
    out = tmp_path / "o.jsonl"
    settings = collect.CollectSettings(n_max=4, max_tokens=24, latency_items=1, concurrency=3)
    summary = await collect.collect(engine, items, out, settings, show=False)
    assert summary["collected"] == 3
    rows = collect.read_rows(out)
    names = collect.grid_names(settings)
    assert len(rows) == 3 * len(names)
    assert collect.completed_queries(rows, names) == {i.id for i in items}
    samples = {r["query_id"]: r for r in collect.read_rows(tmp_path / "o.samples.jsonl")}
    prompt_tokens = {
        i.id: engine.count_tokens(engine.apply_chat_template(i.messages())) for i in items
    }
    for r in rows:
        assert 0.0 <= r["soft_label"] <= 1.0
        assert r["latency_s"] > 0
        assert r["prompt_tokens"] == prompt_tokens[r["query_id"]]
        rec = samples[r["query_id"]]
        lengths = [s["generated_tokens"] for s in rec["samples"]]
        assert len(lengths) == 4 and all(1 <= n <= 24 for n in lengths)
        if r["config"] == "bo4-majority":  # n = n_max: the real 4 samples, all tokens
            assert r["tokens"] == r["prompt_tokens"] + sum(lengths)
        if r["config"] == "single":
            assert r["soft_label"] == sum(s["correct"] for s in rec["samples"]) / 4
        if r["config"] == "greedy":
            assert r["soft_label"] == float(rec["greedy"]["correct"])
    # the latency measurements are real requests: n=4 with 24 tokens takes measurable time
    lat = [json.loads(x) for x in (tmp_path / "o.latency.jsonl").read_text().splitlines()]
    assert {m["n"] for m in lat} == {1, 2, 4}
    assert all(m["wall_s"] > 0 and m["longest_tokens"] >= 1 for m in lat)
