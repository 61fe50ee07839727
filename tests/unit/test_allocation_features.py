"""Step features and the allocation grid."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tidal_agents.allocation import FEATURE_NAMES, StepFeatures, check_grid, default_grid
from tidal_agents.errors import TidalConfigError
from tidal_agents.types import StrategyConfig


def test_from_text_counts_cheap_cues() -> None:
    f = StepFeatures.from_text(
        "What is 372 * 48? Then add 5.", prompt_tokens=120, step_index=2, cached_prefix_tokens=80,
        tools_bound=3, tool_choice_required=True, previous_tool_errors=1, answer_kind="math",
    )
    assert (f.digits, f.max_number_digits, f.numbers) == (6, 3, 3)
    assert f.has_math_ops and f.words == 7 and f.question_marks == 1
    assert f.query_chars == len("What is 372 * 48? Then add 5.")
    assert f.uncached_prompt_tokens == 40
    plain = StepFeatures.from_text("Tell me about the well-known sea.", prompt_tokens=30)
    assert not plain.has_math_ops and plain.digits == 0  # a hyphen between words is no math


def test_operation_cues_tell_addition_from_multiplication() -> None:
    add = StepFeatures.from_text("What is 87 + 28?", prompt_tokens=53)
    mul = StepFeatures.from_text("What is 87 * 28?", prompt_tokens=53)
    assert (add.add_cues, add.mul_cues, mul.add_cues, mul.mul_cues) == (1, 0, 0, 1)
    assert add.op_symbols == mul.op_symbols == 1
    assert add.to_vector()[FEATURE_NAMES.index("add_cues")] == 1.0
    assert not np.array_equal(add.to_vector(), mul.to_vector())
    for text in ("7 x 8", "7×8", "3 \\times 4", "What is 6 times 7?"):
        assert StepFeatures.from_text(text, prompt_tokens=10).mul_cues == 1, text
    sub = StepFeatures.from_text("What is 12 - 5?", prompt_tokens=10)
    div = StepFeatures.from_text("What is 12 / 4? Split it equally.", prompt_tokens=10)
    assert (sub.sub_cues, sub.add_cues) == (1, 0) and div.div_cues == 3


def test_word_problems_and_number_magnitudes() -> None:
    word_mul = StepFeatures.from_text(
        "There are 4 boxes with 6 books in each box. How many books in total?", prompt_tokens=62
    )
    word_sub = StepFeatures.from_text(
        "Ella has 47 stickers and gives away 14. How many stickers are left?", prompt_tokens=63
    )
    assert word_mul.is_word_problem and word_sub.is_word_problem
    assert word_mul.mul_cues == 1 and word_sub.sub_cues == 2 and word_sub.add_cues == 0
    symbolic = StepFeatures.from_text("What is 417 * 3?", prompt_tokens=53)
    assert not symbolic.is_word_problem and symbolic.min_number_digits == 1
    assert symbolic.log10_max_number == pytest.approx(np.log10(418))
    assert symbolic.log10_number_product == pytest.approx(np.log10(418) + np.log10(4))
    plain = StepFeatures.from_text("Tell me about the well-known sea.", prompt_tokens=30)
    assert (plain.sub_cues, plain.op_symbols, plain.log10_number_product) == (0, 0, 0.0)
    assert not plain.is_word_problem
    # a digit run too long for int(): magnitude from its length, no error
    huge = StepFeatures.from_text("9" * 5000, prompt_tokens=10)
    assert huge.log10_max_number == pytest.approx(5000, abs=1e-6)


def test_vector_matches_names_and_is_frozen() -> None:
    f = StepFeatures.from_text("2 + 2", prompt_tokens=10, expected_output_tokens=32)
    v = f.to_vector()
    assert v.shape == (len(FEATURE_NAMES),) and np.all(np.isfinite(v))
    assert v[FEATURE_NAMES.index("kind_text")] == 1.0
    assert v[FEATURE_NAMES.index("expected_output_known")] == 1.0
    assert list(v) == f.vector_values()
    with pytest.raises(dataclasses.FrozenInstanceError):
        f.prompt_tokens = 5  # type: ignore[misc]


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"prompt_tokens": -1}, "prompt_tokens=-1"),
        ({"prompt_tokens": 10, "cached_prefix_tokens": 11}, "cached_prefix_tokens=11"),
        ({"prompt_tokens": 10, "answer_kind": "json"}, "answer_kind='json'"),
        ({"prompt_tokens": 10, "expected_output_tokens": 0}, "expected_output_tokens=0"),
        ({"prompt_tokens": 10, "tool_choice_required": 1}, "tool_choice_required=1"),
        ({"prompt_tokens": 2.5}, "prompt_tokens=2.5"),
        ({"prompt_tokens": 10, "is_word_problem": 1}, "is_word_problem=1"),
        ({"prompt_tokens": 10, "log10_max_number": -1.0}, "log10_max_number=-1.0"),
        ({"prompt_tokens": 10, "log10_number_product": float("nan")}, "log10_number_product=nan"),
    ],
)
def test_bad_features_are_typed_errors(kwargs: dict, fragment: str) -> None:
    with pytest.raises(TidalConfigError, match=fragment.replace("(", r"\(")):
        StepFeatures(**kwargs)


def test_default_grid() -> None:
    grid = default_grid()
    assert [c.name for c in grid] == [
        "greedy", "bo2-majority", "bo4-majority", "bo8-majority", "bo8-confidence",
        "bo16-majority", "beam2", "beam4",
    ]
    assert all(c.max_tokens == 256 for c in grid) and grid[0].temperature == 0.0
    custom = default_grid(32, sample_ns=(3,), confidence_ns=(5,), beam_widths=())
    assert [c.name for c in custom] == ["greedy", "bo3-majority", "bo5-confidence"]
    assert {c.max_tokens for c in custom} == {32}


def test_grid_errors() -> None:
    with pytest.raises(TidalConfigError, match="max_tokens=0"):
        default_grid(0)
    with pytest.raises(TidalConfigError, match=r"sample_ns contains \[1\]"):
        default_grid(sample_ns=(1, 2))
    with pytest.raises(TidalConfigError, match="empty"):
        check_grid([])
    dup = StrategyConfig(strategy="best_of_n", n=4, selector="majority")
    with pytest.raises(TidalConfigError, match="bo4-majority"):
        check_grid([dup, dup])
