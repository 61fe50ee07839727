"""Cost records: merging two runs, the strategies' meter, and the trace's `Spent`."""

from __future__ import annotations

import time
from dataclasses import fields

from tidal_agents.engine.types import GenerationResult
from tidal_agents.strategies._common import CostMeter, cost_of
from tidal_agents.trace.records import Spent
from tidal_agents.types import CostRecord


def test_merged_sums_counts_and_keeps_servers_in_first_seen_order() -> None:
    a = CostRecord(prompt_tokens=10, cached_prompt_tokens=4, generated_tokens=7, engine_calls=2,
                   wall_s=0.5, cut_short=False, servers=("http://a", "http://b"),
                   engine_retries=1)
    b = CostRecord(prompt_tokens=3, cached_prompt_tokens=0, generated_tokens=5, engine_calls=1,
                   wall_s=0.25, cut_short=True, servers=("http://b", "http://c"),
                   engine_retries=2)
    assert a.merged(b) == CostRecord(
        prompt_tokens=13, cached_prompt_tokens=4, generated_tokens=12, engine_calls=3,
        wall_s=0.75, cut_short=True, servers=("http://a", "http://b", "http://c"),
        engine_retries=3,
    )
    assert CostRecord().merged(CostRecord()) == CostRecord()
    assert a.merged(CostRecord()) == a
    assert CostRecord(cut_short=True).merged(CostRecord()).cut_short


def _result(prompt: int, generated: int, **extra: object) -> GenerationResult:
    return GenerationResult(samples=(), prompt_tokens=prompt, cached_prompt_tokens=1,
                            generated_tokens=generated, wall_s=9.0, extra=dict(extra))


def test_cost_of_one_request() -> None:
    assert cost_of(_result(5, 2)) == CostRecord(prompt_tokens=5, cached_prompt_tokens=1,
                                                generated_tokens=2, engine_calls=1)
    failover = cost_of(_result(5, 2, replica="http://b", attempts=["http://a", "http://b"]))
    assert failover.servers == ("http://b",) and failover.engine_retries == 1


def test_meter_sums_every_request_and_measures_its_own_time() -> None:
    meter = CostMeter(started=time.perf_counter() - 1.0)
    meter.add(_result(5, 2, replica="http://a", attempts=["http://a"]))
    meter.add(_result(6, 3, replica="http://b", attempts=["http://a", "http://b"]))
    meter.add(_result(7, 4, replica="http://a", attempts=["http://a"]))
    record = meter.record(cut_short=True)
    assert (record.prompt_tokens, record.cached_prompt_tokens, record.generated_tokens) == (
        18, 3, 9)
    assert record.engine_calls == 3 and record.engine_retries == 1
    assert record.servers == ("http://a", "http://b")
    assert record.cut_short and 1.0 <= record.wall_s < 60  # the meter's clock, not the engine's
    assert not meter.record(cut_short=False).cut_short


def test_spent_is_the_cost_without_cut_short() -> None:
    cost = CostRecord(prompt_tokens=1, cached_prompt_tokens=2, generated_tokens=3,
                      engine_calls=4, wall_s=0.5, cut_short=True, servers=("http://a",),
                      engine_retries=5)
    assert Spent.from_cost(cost) == Spent(prompt_tokens=1, cached_prompt_tokens=2,
                                          generated_tokens=3, engine_calls=4, wall_s=0.5,
                                          servers=("http://a",), engine_retries=5)


def test_spent_records_every_cost_field() -> None:
    # A new CostRecord field belongs in the trace too; cut_short is on the step record.
    assert set(Spent.model_fields) == {f.name for f in fields(CostRecord)} - {"cut_short"}
