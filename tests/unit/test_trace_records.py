"""Trace records and exporters: JSONL round trip and crash tolerance, DataFrame, table,
timeline PNG, custom events."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import matplotlib.image
import pytest
from langchain_core.callbacks import AsyncCallbackHandler, BaseCallbackHandler
from langchain_core.runnables import RunnableConfig, RunnableLambda

from tidal_agents.allocation import CostModel, PriorAccuracyPredictor, StepFeatures, decide
from tidal_agents.allocation.grid import default_grid
from tidal_agents.errors import TidalConfigError
from tidal_agents.trace import Trace, read_jsonl
from tidal_agents.trace.console import COLUMNS
from tidal_agents.trace.events import STEP_EVENT, adispatch_step_event, dispatch_step_event
from tidal_agents.trace.records import StepRecord
from tidal_agents.types import Candidate, CostRecord, StrategyResult

T0 = 1_760_000_000.0  # a wall-clock time


def make_record(step: int, *, error: str | None = None, wall: float = 0.8,
                cut_short: bool = False, time_left: float = 20.0) -> StepRecord:
    f = StepFeatures.from_text("What is 2 + 3?", prompt_tokens=40, step_index=step)
    d = decide(f, default_grid(64), CostModel.default(), PriorAccuracyPredictor(), 1e-4, 0.05,
               5.0)
    result = None if error else StrategyResult(
        selected=Candidate(text="5", token_ids=(20,), finish_reason="stop", answer="5"),
        candidates=(),
        cost=CostRecord(prompt_tokens=40, cached_prompt_tokens=32, generated_tokens=70,
                        engine_calls=1, wall_s=wall, cut_short=cut_short),
        config=d.config,
        details={"votes": {"5": 3, "6": 1}, "scores": (0.5, math.inf)},
    )
    start = T0 + 2.0 * step
    return StepRecord.from_step(
        episode_id="ep1", step_index=step, node="model", langgraph_step=step + 1,
        started_at=start, ended_at=start + wall, time_left_before_s=time_left - 2.0 * step,
        time_left_after_s=time_left - 2.0 * step - wall, decision=d, result=result,
        error=error, features=f, finish=None if error else "answer",
    )


def test_jsonl_round_trip_is_exact(tmp_path: Path) -> None:
    trace = Trace([make_record(0), make_record(1, cut_short=True), make_record(2, error="boom")])
    path = trace.to_jsonl(tmp_path / "sub" / "t.jsonl")
    back = Trace.from_jsonl(path)
    assert back.records == trace.records
    assert back[1].cut_short and back[2].spent is None and back[2].error == "boom"
    assert back[0].selection["scores"] == [0.5, None]  # inf is not JSON: stored as null
    # the deadline comes back from the first step's clock, so the plot can draw it
    assert back.started_at == T0 and back.deadline_s == 20.0


def test_cut_off_last_line_is_skipped_but_bad_middle_lines_are_errors(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    good = [make_record(i).model_dump_json() for i in range(2)]
    path.write_text(good[0] + "\n" + good[1] + "\n" + good[1][: len(good[1]) // 2])
    assert [r.step_index for r in read_jsonl(path)] == [0, 1]
    path.write_text(good[0] + "\n" + '{"step_index": 1}' + "\n" + good[1] + "\n")
    with pytest.raises(TidalConfigError, match=r"t.jsonl:2 is not a step record"):
        read_jsonl(path)


def test_predicted_vs_actual() -> None:
    r = make_record(0, wall=1.0)
    pva = r.predicted_vs_actual
    assert pva["actual_latency_s"] == 1.0 and pva["actual_tokens"] == 70.0
    assert pva["predicted_latency_s"] == r.decision["predicted_latency_s"] > 0
    assert r.latency_error == pytest.approx((1.0 - pva["predicted_latency_s"])
                                            / pva["predicted_latency_s"])
    assert r.tokens_error == pytest.approx((70 - r.predicted_tokens) / r.predicted_tokens)
    assert make_record(1, error="x").predicted_vs_actual["actual_tokens"] is None


def test_dataframe_columns() -> None:
    df = Trace([make_record(i) for i in range(3)]).to_dataframe()
    assert len(df) == 3
    assert {
        "episode_id", "step_index", "node", "langgraph_step", "started_at", "ended_at",
        "time_left_before_s", "time_left_after_s", "allowance_s", "strategy", "n",
        "predicted_latency_s", "predicted_tokens", "predicted_accuracy", "cut_short", "finish",
        "error", "spent_prompt_tokens", "spent_cached_prompt_tokens", "spent_generated_tokens",
        "spent_engine_calls", "spent_wall_s", "reason", "predictor_kind", "latency_error",
        "tokens_error",
    } <= set(df.columns)
    assert list(df["step_index"]) == [0, 1, 2] and set(df["predictor_kind"]) == {"prior"}


def test_table_compares_generated_tokens() -> None:
    table = Trace([make_record(0), make_record(1, error="engine died")]).table()
    assert table.row_count == 2 and [c.header for c in table.columns] == list(COLUMNS)
    actual_tok = list(table.columns[COLUMNS.index("actual tok")].cells)
    assert actual_tok == ["70", "-"]  # generated tokens: what the prediction is about
    why = list(table.columns[COLUMNS.index("why")].cells)
    assert why[1] == "engine died"


def test_plot_png_is_written_and_loadable(tmp_path: Path) -> None:
    trace = Trace([make_record(0), make_record(1, cut_short=True), make_record(2, error="x")])
    trace.started_at, trace.deadline_s = T0 - 1.0, 10.0
    png = trace.plot(tmp_path / "plots" / "timeline.png")
    img = matplotlib.image.imread(str(png))
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 300
    empty = Trace().plot(tmp_path / "empty.png")  # an episode that never reached a model
    assert matplotlib.image.imread(str(empty)).ndim == 3


def test_trace_appends_from_threads() -> None:
    import threading

    trace = Trace()
    rec = make_record(0)
    threads = [threading.Thread(target=lambda: [trace.append(rec) for _ in range(200)])
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(trace) == 800 == len(trace.records)
    with pytest.raises(TypeError, match="StepRecord"):
        trace.append({"step_index": 0})  # type: ignore[arg-type]


# -------------------------------------------------------------------- events
class Collect(BaseCallbackHandler):
    def __init__(self) -> None:
        self.seen: list[tuple[str, Any]] = []

    def on_custom_event(self, name: str, data: Any, **kwargs: Any) -> None:
        self.seen.append((name, data))


class ACollect(AsyncCallbackHandler):
    def __init__(self) -> None:
        self.seen: list[tuple[str, Any]] = []

    async def on_custom_event(self, name: str, data: Any, **kwargs: Any) -> None:
        self.seen.append((name, data))


def test_step_event_reaches_callbacks_inside_a_runnable() -> None:
    rec = make_record(0)
    handler = Collect()

    def step(x: int, config: RunnableConfig) -> bool:
        return dispatch_step_event(rec, config)

    assert RunnableLambda(step).invoke(1, {"callbacks": [handler]}) is True
    assert [name for name, _ in handler.seen] == [STEP_EVENT]
    data = handler.seen[0][1]
    assert data["step_index"] == 0 and data["decision"]["chosen"] == rec.strategy


def test_async_step_event_reaches_callbacks() -> None:
    rec = make_record(1)
    handler = ACollect()

    async def step(x: int, config: RunnableConfig) -> bool:
        return await adispatch_step_event(rec, config)

    ok = asyncio.run(RunnableLambda(step).ainvoke(1, {"callbacks": [handler]}))
    assert ok is True and handler.seen[0][0] == STEP_EVENT


def test_step_event_outside_a_runnable_is_skipped_quietly() -> None:
    rec = make_record(0)
    assert dispatch_step_event(rec) is False
    assert asyncio.run(adispatch_step_event(rec.model_dump(mode="json"))) is False

