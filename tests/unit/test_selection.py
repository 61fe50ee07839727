"""Answer extraction, tool-call canonicalisation and every selector on hand-made candidates."""

from __future__ import annotations

import math
import threading

import pytest

from tidal_agents.errors import TidalConfigError
from tidal_agents.selection import (
    answers_equal,
    canonical_answer,
    canonical_tool_call,
    confidence,
    extract_answer,
    has_final_answer,
    parse_tool_call,
    parse_tool_calls,
    select,
    vote,
)
from tidal_agents.types import Candidate


def cand(text: str, lp: float | None = None, lps: tuple[float, ...] = ()) -> Candidate:
    return Candidate(text=text, token_ids=(), finish_reason="stop", mean_logprob=lp,
                     token_logprobs=lps)


# ------------------------------------------------------------------ extraction
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("So 3 + 4 = 7.", "7"),
        ("First 2, then \\boxed{\\frac{1}{2}} and later 9", "\\frac{1}{2}"),
        ("\\boxed{\\frac{a}{\\sqrt{b}}}", "\\frac{a}{\\sqrt{b}}"),
        ("The answer is 1,234 apples.", "1234"),
        ("The answer is $\\frac{3}{4}$.", "\\frac{3}{4}"),
        ("Reasoning 5 and 6.\n#### 72", "72"),
        ("Answer: -5", "-5"),
        ("The final answer is: +2.50", "2.50"),
        ("The answer is 12. Then 13 more words 99", "12"),
        ("no digits here", None),
        ("", None),
        ("Die Antwort ist 7 \u00e4pfel, also 8", "8"),
        ("so it is \\frac{3}{4}", "\\frac{3}{4}"),
        ("we get $-\\frac{3}{4}$.", "-\\frac{3}{4}"),
    ],
)
def test_extract_math(text: str, expected: str | None) -> None:
    assert extract_answer(text) == expected


def test_extract_text_normalises_and_caps_length() -> None:
    assert extract_answer("  «Paris». ", "text") == "«paris»"
    assert extract_answer("The answer is: PARIS!", "text") == "paris"
    assert extract_answer("Ｐａｒｉｓ", "text") == "paris"  # NFKC folds full-width letters
    assert extract_answer("word " * 100, "text") is None


def test_extract_rejects_unknown_kind() -> None:
    with pytest.raises(TidalConfigError, match="kind='latex'"):
        extract_answer("1", "latex")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("a", "b"),
    [("\\boxed{1/2}", "0.5"), ("2", "2.0"), ("1,000", "1000"), ("x = 3", "3"),
     ("\\frac{3}{4}", "0.75"), ("-5", "-5.000")],
)
def test_equivalent_answers_share_a_key(a: str, b: str) -> None:
    assert canonical_answer(a) == canonical_answer(b)
    assert answers_equal(extract_answer(a) or a, extract_answer(b) or b)


def test_different_answers_differ() -> None:
    assert canonical_answer("2") != canonical_answer("3")
    assert not answers_equal("2", "3")
    assert not answers_equal("1/2", "0.49")
    assert answers_equal("x+1", "1+x")
    assert canonical_answer("nothing") is None


def test_answers_equal_off_main_thread() -> None:
    # math-verify's signal.alarm timeout would raise off the main thread
    out: list[bool] = []
    t = threading.Thread(target=lambda: out.append(answers_equal("\\frac{1}{2}", "0.5")))
    t.start()
    t.join()
    assert out == [True]


def test_answers_equal_rejects_non_strings() -> None:
    with pytest.raises(TidalConfigError, match="two strings"):
        answers_equal(2, "2")  # type: ignore[arg-type]


def test_has_final_answer_is_strict() -> None:
    assert has_final_answer("so \\boxed{4}")
    assert has_final_answer("The answer is 4.")
    assert not has_final_answer("2 + 2 makes 4")


# ------------------------------------------------------------------ tool calls
def test_parse_tool_call_shapes() -> None:
    assert parse_tool_call('{"name": "add", "arguments": {"a": 1}}') == {
        "name": "add", "arguments": {"a": 1}}
    # OpenAI wire shape with id and string arguments
    wire = ('{"id": "c1", "type": "function", '
            '"function": {"name": "f", "arguments": "{\\"x\\": 2}"}}')
    assert parse_tool_call(wire) == {"name": "f", "arguments": {"x": 2}}
    assert parse_tool_call('```json\n{"name": "f", "arguments": {}}\n```') == {
        "name": "f", "arguments": {}}
    par = parse_tool_call(
        '[{"name": "a", "arguments": {}}, {"name": "b", "arguments": {"k": [1]}}]'
    )
    assert par == [{"name": "a", "arguments": {}}, {"name": "b", "arguments": {"k": [1]}}]
    assert parse_tool_calls('{"name": "a", "arguments": {}}') == [{"name": "a", "arguments": {}}]


@pytest.mark.parametrize(
    "bad",
    ["", "not json", '{"arguments": {}}', '{"name": "", "arguments": {}}',
     '{"name": "f", "arguments": [1, 2]}', "[]", '[{"name": "f", "arguments": {}}, 3]', "42"],
)
def test_parse_tool_call_rejects(bad: str) -> None:
    assert parse_tool_call(bad) is None


def test_canonical_tool_call_ignores_ids_order_and_number_form() -> None:
    a = {"id": "call_1", "name": "add", "args": {"b": 2.0, "a": {"y": [1, 2.0], "x": "é"}}}
    b = parse_tool_call(
        '{"name": "add", "arguments": {"a": {"x": "e\\u0301", "y": [1.0, 2]}, "b": 2}}'
    )
    assert b is not None
    assert canonical_tool_call(a) == canonical_tool_call(b)
    assert canonical_tool_call({"name": "add", "arguments": {"b": 2.5}}) != canonical_tool_call(
        {"name": "add", "arguments": {"b": 2}})
    # booleans are not numbers: True must not equal 1
    assert canonical_tool_call({"name": "f", "arguments": {"v": True}}) != canonical_tool_call(
        {"name": "f", "arguments": {"v": 1}})
    # parallel calls: order does not matter
    x, y = {"name": "x", "arguments": {}}, {"name": "y", "arguments": {"q": 1}}
    assert canonical_tool_call([x, y]) == canonical_tool_call([y, x])
    with pytest.raises(TidalConfigError, match="not a tool call"):
        canonical_tool_call({"arguments": {}})


# ------------------------------------------------------------------ confidence
def test_confidence_lowest_window_and_mean() -> None:
    lps = [-0.1] * 20 + [-3.0] * 4 + [-0.1] * 20
    mean = confidence(lps, "mean")
    low = confidence(lps, "lowest_window", window=4)
    assert mean is not None and low is not None
    assert math.isclose(low, math.exp(-3.0))
    assert low < mean
    assert confidence([-0.5, float("nan")], "mean") == pytest.approx(math.exp(-0.5))
    assert confidence([]) is None
    with pytest.raises(TidalConfigError, match="window=0"):
        confidence([-1.0], window=0)


# ------------------------------------------------------------------ selectors
def test_majority_picks_most_common_equivalent_answer() -> None:
    cands = [cand("so \\boxed{1/2}", -1.0), cand("it is 3", -0.1), cand("0.5", -0.5),
             cand("answer 3", -0.2), cand("The answer is 0.50", -2.0)]
    sel = vote(cands)
    assert sel.rule == "majority"
    assert sel.key == "num:0.5"
    assert sel.tally == {"num:0.5": 3.0, "num:3": 2.0}
    # within the winning answer the most confident member is returned
    assert sel.index == 2
    assert sel.share == pytest.approx(0.6)


def test_majority_tie_goes_to_summed_confidence_then_first() -> None:
    tie = [cand("7", -2.0), cand("8", -0.1), cand("7", -2.0), cand("8", -0.1)]
    assert vote(tie).key == "num:8"
    no_lp = [cand("8"), cand("7"), cand("7"), cand("8")]
    sel = vote(no_lp)
    assert sel.key == "num:8" and sel.index == 0


def test_no_extractable_answer_does_not_vote() -> None:
    cands = [cand("hmm", -0.01), cand("I think 4", -3.0), cand("unsure", -0.02)]
    assert vote(cands).index == 1
    nobody = [cand("hmm", -1.0), cand("what", -0.3), cand("no", -0.3)]
    sel = vote(nobody)
    assert sel.rule == "fallback_logprob" and sel.index == 1 and sel.key is None


def test_confidence_vote_outweighs_headcount() -> None:
    cands = [cand("5", lps=(-3.0,) * 4), cand("5", lps=(-3.0,) * 4),
             cand("6", lps=(-0.05,) * 4)]
    assert vote(cands).key == "num:5"
    sel = select(cands, "confidence")
    assert sel.rule == "confidence" and sel.key == "num:6" and sel.index == 2


def test_tool_vote_compares_canonical_calls() -> None:
    cands = [
        cand('{"name": "add", "arguments": {"a": 2, "b": 3}}', -0.9),
        cand('{"name": "mul", "arguments": {"a": 2, "b": 3}}', -0.1),
        cand('{"id": "z", "name": "add", "arguments": {"b": 3.0, "a": 2.0}}', -0.3),
        cand("not a call", -0.01),
    ]
    sel = select(cands, "tool_vote")
    assert sel.rule == "tool_vote"
    assert sel.tally == {
        canonical_tool_call({"name": "add", "arguments": {"a": 2, "b": 3}}): 2.0,
        canonical_tool_call({"name": "mul", "arguments": {"a": 2, "b": 3}}): 1.0,
    }
    assert sel.index == 2  # the more confident of the two "add" calls


def test_text_vote_with_unicode() -> None:
    cands = [cand("Zürich", -1.0), cand("zürich.", -1.0), cand("Zurich", -0.1)]
    sel = vote(cands, "text")
    assert sel.key == "zürich" and sel.index == 0


class _LengthScorer:
    def score(self, prompt: str, texts: list[str]) -> list[float]:
        return [float(len(t)) for t in texts]


def test_scorer_selector_and_errors() -> None:
    cands = [cand("ab"), cand("abcd"), cand("abcd")]
    sel = select(cands, "scorer", scorer=_LengthScorer(), prompt="q")
    assert sel.index == 1 and sel.weights == (2.0, 4.0, 4.0)
    with pytest.raises(TidalConfigError, match="needs a scorer"):
        select(cands, "scorer")
    with pytest.raises(TidalConfigError, match="selector='best'"):
        select(cands, "best")  # type: ignore[arg-type]
    with pytest.raises(TidalConfigError, match="at least one"):
        select([], "majority")
    assert select(cands, "first").index == 0
