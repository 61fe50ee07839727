"""A user's own tasks: collect through the step path, train, and decide with the file."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tidal_agents.engine import LocalVLLMEngine
from tidal_agents.evaluation import collect
from tidal_agents.types import StrategyConfig

pytestmark = pytest.mark.engine

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "train_own_allocator.py"


def test_example_trains_an_allocator_on_own_tasks(engine: LocalVLLMEngine, tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("train_own_allocator", EXAMPLE)
    assert spec and spec.loader
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)

    out = example.run(tasks=6, n_max=2, max_tokens=48, workdir=tmp_path)

    rows = collect.read_rows(tmp_path / "outcomes.jsonl")
    assert {r["query_id"] for r in rows} == {
        f"{name}-{i}-{kind}" for i in range(6)
        for name, kind in (("pens", "text"), ("product", "call"), ("product", "answer"))}
    assert {r["kind"] for r in rows} == {"text", "tool_call", "tool_answer"}
    report = out["report"]
    assert set(report["coverage"]) == {"text", "tool_call", "tool_answer"}
    assert out["predictor_file"].is_file()
    records = list(out["trace"])
    assert [r.features["answer_kind"] for r in records][:2] == ["text", "tool_call"]
    assert all(r.decision["predictor_kind"] == "trained" for r in records)
    # the chat model chose among the configurations the collection covered
    covered = {c.name for c in example.covered_grid(report["coverage"], 48)}
    assert "bo4-majority" not in covered
    assert {StrategyConfig(**r.decision["config"]).name for r in records} <= covered
