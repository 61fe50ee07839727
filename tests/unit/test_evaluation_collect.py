"""Bootstrap soft labels, the latency model and resumable outcome files (no engine)."""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass
from pathlib import Path

import pytest

from tidal_agents.errors import TidalConfigError
from tidal_agents.evaluation import collect
from tidal_agents.evaluation.collect import (
    CollectSettings,
    LatencyMeasurement,
    LatencyModel,
    SampleOutcome,
    bootstrap,
    vote_expected_correct,
)
from tidal_agents.evaluation.tasks import graded_arithmetic


def _s(key: str | None, ok: bool, tokens: int = 10, lp: float | None = -0.5) -> SampleOutcome:
    return SampleOutcome(key, ok, tokens, lp, "stop")


def test_majority_vote_and_tie_split() -> None:
    assert vote_expected_correct([_s("a", True), _s("a", True), _s("b", False)], "majority") == 1
    assert vote_expected_correct([_s("a", True), _s("b", False), _s("b", False)], "majority") == 0
    # a 1-1 tie between a right and a wrong answer is worth one half
    assert vote_expected_correct([_s("a", True), _s("b", False)], "majority") == 0.5
    # samples without an answer do not vote
    assert vote_expected_correct([_s(None, False), _s(None, False), _s("a", True)], "majority") == 1
    assert vote_expected_correct([_s(None, False)], "majority") == 0.0


def test_confidence_vote_weighs_logprobs() -> None:
    samples = [_s("a", True, lp=-0.05), _s("b", False, lp=-2.0), _s("b", False, lp=-2.0)]
    assert vote_expected_correct(samples, "majority") == 0.0
    assert vote_expected_correct(samples, "confidence") == 1.0  # 0.95 > 2 * 0.135
    with pytest.raises(TidalConfigError, match="selector"):
        vote_expected_correct(samples, "best")  # type: ignore[arg-type]


def test_bootstrap_soft_label_matches_hypergeometric() -> None:
    # 4 of 16 samples right, all distinct wrong answers: a 1-sample "vote" is right w.p. 1/4
    samples = [_s("r", True)] * 4 + [_s(f"w{i}", False) for i in range(12)]
    out = bootstrap(samples, 1, "majority", 4000, random.Random(0))
    assert out.soft_label == pytest.approx(0.25, abs=0.03)
    # n = pool size is the real vote, used once: 'r' has 4 votes, every wrong answer 1
    full = bootstrap(samples, 16, "majority", 30, random.Random(0))
    assert full.soft_label == 1.0 and full.longest_tokens == (10,)
    assert full.generated_tokens == 160


def test_bootstrap_tokens_and_longest() -> None:
    samples = [_s("a", True, tokens=t) for t in (5, 10, 20, 40)]
    out = bootstrap(samples, 2, "majority", 200, random.Random(1))
    assert out.generated_tokens == pytest.approx(2 * 75 / 4, rel=0.1)
    assert all(x in (10, 20, 40) for x in out.longest_tokens)  # never the shortest alone
    with pytest.raises(TidalConfigError, match="n=5"):
        bootstrap(samples, 5, "majority", 30, random.Random(0))


def test_latency_model_fit() -> None:
    ms = [LatencyMeasurement("q", n, 0.7, 0.3 + length * (0.02 + 0.001 * n), length, n * length, 40)
          for n in (1, 2, 4, 8, 16) for length in (10, 50, 90)]
    model = LatencyModel.fit(ms)
    assert model.predict(1, 50) == pytest.approx(0.3 + 50 * 0.021, rel=1e-3)
    assert model.predict(16, 90) == pytest.approx(0.3 + 90 * 0.036, rel=1e-3)
    assert model.predict(8, 50) > model.predict(2, 50) > model.predict(1, 40)
    with pytest.raises(TidalConfigError, match="at least 3"):
        LatencyModel.fit(ms[:2])


def test_settings_validation_and_grid() -> None:
    with pytest.raises(TidalConfigError, match="power of two"):
        CollectSettings(n_max=12)
    with pytest.raises(TidalConfigError, match="beam"):
        CollectSettings(beam_widths=(1,))
    names = collect.grid_names(CollectSettings(n_max=8, beam_widths=(2,)))
    assert names == ["greedy", "single", "bo2-majority", "bo2-confidence", "bo4-majority",
                     "bo4-confidence", "bo8-majority", "bo8-confidence", "beam2"]


@dataclass(frozen=True)
class _FakeSample:
    text: str
    token_ids: tuple[int, ...]
    finish_reason: str = "stop"
    mean_logprob: float | None = -0.3


@dataclass(frozen=True)
class _FakeResult:
    samples: tuple[_FakeSample, ...]
    prompt_tokens: int = 30
    generated_tokens: int = 0
    wall_s: float = 0.5


class _FakeEngine:
    """Answers `What is a + b?` right on even sample indices, wrong on odd ones."""

    backend_id = "fake"

    def __init__(self) -> None:
        self.calls = 0

    def apply_chat_template(self, messages: list[dict[str, str]]) -> str:
        return messages[-1]["content"]

    async def generate(self, request: object) -> _FakeResult:
        import re

        self.calls += 1
        prompt, n = request.prompt, request.n  # type: ignore[attr-defined]
        a, op, b = re.search(r"(\d+) ([+*]) (\d+)", prompt).groups()  # type: ignore[union-attr]
        right = int(a) + int(b) if op == "+" else int(a) * int(b)
        samples = tuple(
            _FakeSample(f"The answer is {right if i % 2 == 0 else right + 1}.", (1,) * (5 + i))
            for i in range(n)
        )
        return _FakeResult(samples, generated_tokens=sum(len(s.token_ids) for s in samples))


def test_collect_writes_rows_and_resumes(tmp_path: Path) -> None:
    items = graded_arithmetic(6, seed=0, kinds=["add-1d", "mul-1d"])
    out = tmp_path / "o.jsonl"
    settings = CollectSettings(n_max=4, max_tokens=16, latency_items=2, concurrency=3)
    engine = _FakeEngine()
    summary = asyncio.run(collect.collect(engine, items[:4], out, settings, show=False))
    assert summary["collected"] == 4
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    names = collect.grid_names(settings)
    assert len(rows) == 4 * len(names)
    by = {(r["query_id"], r["config"]): r for r in rows}
    first = items[0].id
    assert by[(first, "greedy")]["soft_label"] == 1.0  # sample 0 is right
    assert by[(first, "single")]["soft_label"] == 0.5  # half the samples are right
    assert by[(first, "bo4-majority")]["soft_label"] == 0.5  # a 2-2 tie
    assert by[(first, "bo4-majority")]["tokens"] == 30 + (5 + 6 + 7 + 8)
    assert all(r["latency_s"] > 0 and r["latency_source"] == "model" for r in rows)
    assert (tmp_path / "o.latency.jsonl").exists() and (tmp_path / "o.samples.jsonl").exists()
    calls = engine.calls
    again = asyncio.run(collect.collect(engine, items, out, settings, show=False))
    assert again["skipped"] == 4 and again["collected"] == 2
    assert engine.calls == calls + 2 * 2  # only the two new items (n_max + greedy each)
    rows = collect.read_rows(out)
    assert len(collect.completed_queries(rows, names)) == 6


def test_latency_fit_ignores_contention_outliers() -> None:
    ms = [LatencyMeasurement("q", n, 0.7, 0.2 + 0.03 * length, length, n * length, 40)
          for n in (1, 4) for length in range(10, 90, 10)]
    ms[2] = LatencyMeasurement("q", 1, 0.7, 25.0, 30, 30, 40)  # ran beside another engine
    ms[9] = LatencyMeasurement("q", 4, 0.7, 12.0, 20, 80, 40)
    model = LatencyModel.fit(ms)
    assert model.predict(4, 50) == pytest.approx(0.2 + 0.03 * 50, rel=0.05)


def test_rebuild_reproduces_rows(tmp_path: Path) -> None:
    items = graded_arithmetic(5, seed=0, kinds=["add-1d", "mul-1d"])
    out = tmp_path / "o.jsonl"
    settings = CollectSettings(n_max=4, max_tokens=16, latency_items=2, concurrency=2)
    asyncio.run(collect.collect(_FakeEngine(), items, out, settings, show=False))
    dest = tmp_path / "again.jsonl"
    assert collect.rebuild(out, items, settings, dest) == 5
    key = lambda r: (r["query_id"], r["config"])  # noqa: E731
    before = sorted(collect.read_rows(out), key=key)
    after = sorted(collect.read_rows(dest), key=key)
    for r in before:
        r["extra"] = {}
    assert before == after
