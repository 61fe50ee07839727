"""Cheap per-step features: what the controller and its predictors know about a step.

Everything here is computed from the prompt text and the agent's state in
microseconds; nothing calls the model. The accuracy probe of the paper used
hidden states; we start from surface features so that a decision costs well
under a millisecond (see docs/design-notes.md, 'Surface features instead of
hidden states').
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from typing import Any, Literal, get_args

import numpy as np

from tidal_agents.errors import TidalConfigError
from tidal_agents.types import AnswerKind
from tidal_agents.validation import check_bool, check_choice, check_int, check_number

#: the allocator's kinds of step: the answer kinds, and "tool_answer" (a step after a
#: tool result, tools bound: the reply is mostly an answer, decoded under the tool
#: grammar; its outcomes differ from a first tool-call step's)
StepKind = AnswerKind | Literal["tool_answer"]
ANSWER_KINDS: tuple[str, ...] = (*get_args(AnswerKind), "tool_answer")

_DIGIT_RUN = re.compile(r"\d+")
_MATH_OPS = re.compile(r"(?<![a-zA-Z])[+\-*/^=×÷]|\\frac|\\sqrt|sqrt\(|\bsum\b|\bproduct\b")
_WORD = re.compile(r"\w+")
_LATEX_COMMAND = re.compile(r"\\[a-zA-Z]+")
#: an arithmetic symbol between two operands ("3 + 4", "12*5", "7 x 8", "9 - 2", "8/2")
_SYMBOL_OPS: dict[str, re.Pattern[str]] = {
    "add": re.compile(r"(?<=[\w)\s])\+(?=\s*[\w(])"),
    "sub": re.compile(r"(?<=[\d)])\s*[-\u2212]\s*(?=[\d(])"),
    "mul": re.compile(r"(?<=[\d)])\s*(?:\*|\u00d7|\\times|\\cdot|x)\s*(?=[\d(])"),
    "div": re.compile(r"(?<=[\d)])\s*(?:/|\u00f7|\\div)\s*(?=[\d(])|\\frac"),
}
#: operation words of everyday English (word problems); matched as whole words, lower case
_OP_WORDS: dict[str, frozenset[str]] = {
    "add": frozenset({
        "add", "adds", "added", "adding", "plus", "sum", "total", "altogether", "combined",
        "together", "more", "gets", "got", "gains", "gained", "receives", "received", "buys",
        "bought", "increase", "increases", "increased",
    }),
    "sub": frozenset({
        "minus", "subtract", "subtracts", "subtracted", "difference", "less", "fewer", "left",
        "remain", "remains", "remaining", "away", "loses", "lost", "spends", "spent", "eats",
        "ate", "decrease", "decreases", "decreased",
    }),
    "mul": frozenset({
        "times", "multiply", "multiplies", "multiplied", "product", "each", "per", "every",
        "twice", "double", "triple", "dozen", "dozens",
    }),
    "div": frozenset({
        "divide", "divides", "divided", "quotient", "split", "share", "shared", "shares",
        "half", "halves", "ratio", "average", "equally",
    }),
}

#: the order of `StepFeatures.to_vector()` (predictors persist it to check compatibility)
FEATURE_NAMES: tuple[str, ...] = (
    "log_prompt_tokens",
    "cached_fraction",
    "log_query_chars",
    "step_index",
    "tools_bound",
    "tool_choice_required",
    "tool_choice_none",
    "previous_tool_errors",
    "log_expected_output_tokens",
    "expected_output_known",
    "kind_text",
    "kind_math",
    "kind_tool_call",
    "kind_tool_answer",
    "digits",
    "max_number_digits",
    "numbers",
    "has_math_ops",
    "log_words",
    "question_marks",
    "add_cues",
    "sub_cues",
    "mul_cues",
    "div_cues",
    "op_symbols",
    "is_word_problem",
    "min_number_digits",
    "log10_max_number",
    "log10_number_product",
)


@dataclass(frozen=True)
class StepFeatures:
    """What is known about one agent step before choosing how to decode it (each
    field is described below it)."""

    prompt_tokens: int
    """Tokens of the fully formatted prompt."""
    cached_prefix_tokens: int = 0
    """Estimate of the prompt prefix already in vLLM's prefix cache (e.g. the previous
    step's prompt length)."""
    query_chars: int = 0
    """Characters of the latest user/tool turn (the "question")."""
    step_index: int = 0
    """0-based index of this model call within the episode."""
    tools_bound: int = 0
    """Number of tools bound to the model."""
    tool_choice_required: bool = False
    """The model must call a tool."""
    tool_choice_none: bool = False
    """Tools are bound but the model must answer (tool_choice "none"): a reply cannot
    call a tool again."""
    previous_tool_errors: int = 0
    """Tool errors seen so far in the episode."""
    expected_output_tokens: int | None = None
    """Expected new tokens per sample, None if unknown (the cost model then uses its
    learned per-kind estimate)."""
    answer_kind: StepKind = "text"
    """The kind of step: "text", "math", "tool_call", or "tool_answer" (after a tool
    result, tools bound)."""
    digits: int = 0
    """Digit characters in the query."""
    max_number_digits: int = 0
    """Length of the longest digit run (3-digit sums are much harder than 1-digit
    ones for a small model: docs/design-notes.md, 'The embedded model's
    arithmetic')."""
    numbers: int = 0
    """Count of digit runs."""
    has_math_ops: bool = False
    """The query contains arithmetic operators or math markup."""
    words: int = 0
    """Word count of the query."""
    question_marks: int = 0
    """'?' characters in the query."""
    add_cues: int = 0
    """How often the query asks for addition, by symbol between operands ("3 + 4")
    or by everyday word ("plus", "total", "more"). A small model's accuracy, and
    what extra samples buy, differ by operation (docs/design-notes.md, 'The
    embedded model's arithmetic'); the other
    three operations have their own counts."""
    sub_cues: int = 0
    """Subtraction cues, as `add_cues`: "9 - 2", "minus", "left", "fewer"."""
    mul_cues: int = 0
    """Multiplication cues, as `add_cues`: "12 * 5", "7 x 8", LaTeX \\times,
    "times", "each", "per"."""
    div_cues: int = 0
    """Division cues, as `add_cues`: "8 / 2", LaTeX \\frac, "divided", "share",
    "half"."""
    op_symbols: int = 0
    """Arithmetic symbols between operands (all operations)."""
    is_word_problem: bool = False
    """Numbers in prose, with no arithmetic symbol between them."""
    min_number_digits: int = 0
    """Length of the shortest digit run (0 without numbers)."""
    log10_max_number: float = 0.0
    """log10(1 + the largest number in the query)."""
    log10_number_product: float = 0.0
    """Sum of log10(1 + n) over the query's numbers, about the digits of their
    product (how long the answer of a product is)."""
    concurrent_sequences: int = 0
    """Sequences the engine is already decoding for other requests when the step
    starts. They share every decode step with this one, so the cost model's latency
    rises with load (not a predictor input)."""
    queued_prompt_tokens: int = 0
    """Prompt tokens of other requests waiting to be prefilled when the step starts:
    the engine prefills them before this step's prompt (not a predictor input)."""

    def __post_init__(self) -> None:
        for f in fields(self):
            name, value = f.name, getattr(self, f.name)
            if name == "answer_kind":
                check_choice(name, value, ANSWER_KINDS)
            elif name in _BOOL_FIELDS:
                check_bool(name, value)
            elif name == "expected_output_tokens":
                check_int(name, value, lo=1, allow_none=True)
            elif name in _FLOAT_FIELDS:
                check_number(name, value, lo=0)
            else:
                check_int(name, value, lo=0)
        if self.cached_prefix_tokens > self.prompt_tokens:
            raise TidalConfigError(
                f"cached_prefix_tokens={self.cached_prefix_tokens} exceeds prompt_tokens="
                f"{self.prompt_tokens}; allowed is 0 <= cached_prefix_tokens <= prompt_tokens."
            )

    @property
    def uncached_prompt_tokens(self) -> int:
        return self.prompt_tokens - self.cached_prefix_tokens

    @classmethod
    def from_text(
        cls,
        query_text: str,
        *,
        prompt_tokens: int,
        step_index: int = 0,
        cached_prefix_tokens: int = 0,
        tools_bound: int = 0,
        tool_choice_required: bool = False,
        tool_choice_none: bool = False,
        previous_tool_errors: int = 0,
        expected_output_tokens: int | None = None,
        answer_kind: StepKind = "text",
        concurrent_sequences: int = 0,
        queued_prompt_tokens: int = 0,
    ) -> StepFeatures:
        """Features of a step whose latest question is `query_text`."""
        if not isinstance(query_text, str):
            raise TidalConfigError(
                f"query_text must be a str, got {type(query_text).__name__}."
            )
        runs = _DIGIT_RUN.findall(query_text)
        magnitudes = [_log10_1p(r) for r in runs]
        lowered = query_text.lower()
        # operation words outside LaTeX commands (\times is a symbol, not the word "times")
        words = _WORD.findall(_LATEX_COMMAND.sub(" ", lowered))
        symbols = {op: len(rx.findall(lowered)) for op, rx in _SYMBOL_OPS.items()}
        cues = {op: symbols[op] + sum(w in vocab for w in words)
                for op, vocab in _OP_WORDS.items()}
        op_symbols = sum(symbols.values())
        return cls(
            prompt_tokens=prompt_tokens,
            cached_prefix_tokens=cached_prefix_tokens,
            query_chars=len(query_text),
            step_index=step_index,
            tools_bound=tools_bound,
            tool_choice_required=tool_choice_required,
            tool_choice_none=tool_choice_none,
            previous_tool_errors=previous_tool_errors,
            expected_output_tokens=expected_output_tokens,
            answer_kind=answer_kind,
            digits=sum(len(r) for r in runs),
            max_number_digits=max((len(r) for r in runs), default=0),
            numbers=len(runs),
            has_math_ops=_MATH_OPS.search(query_text) is not None,
            words=len(_WORD.findall(query_text)),
            question_marks=query_text.count("?"),
            add_cues=cues["add"],
            sub_cues=cues["sub"],
            mul_cues=cues["mul"],
            div_cues=cues["div"],
            op_symbols=op_symbols,
            is_word_problem=bool(runs) and op_symbols == 0 and len(words) > len(runs) + 3,
            min_number_digits=min((len(r) for r in runs), default=0),
            log10_max_number=max(magnitudes, default=0.0),
            log10_number_product=sum(magnitudes, 0.0),
            concurrent_sequences=concurrent_sequences,
            queued_prompt_tokens=queued_prompt_tokens,
        )

    def to_vector(self) -> np.ndarray:
        """Numeric vector in the order of `FEATURE_NAMES` (logs tame heavy tails)."""
        return np.array(self.vector_values(), dtype=np.float64)

    def vector_values(self) -> list[float]:
        """`to_vector()` as a plain list (cheaper when building many rows)."""
        expected = self.expected_output_tokens
        return [
            math.log1p(self.prompt_tokens),
            self.cached_prefix_tokens / self.prompt_tokens if self.prompt_tokens else 0.0,
            math.log1p(self.query_chars),
            float(self.step_index),
            float(self.tools_bound),
            float(self.tool_choice_required),
            float(self.tool_choice_none),
            float(self.previous_tool_errors),
            math.log1p(expected) if expected is not None else 0.0,
            float(expected is not None),
            float(self.answer_kind == "text"),
            float(self.answer_kind == "math"),
            float(self.answer_kind == "tool_call"),
            float(self.answer_kind == "tool_answer"),
            float(self.digits),
            float(self.max_number_digits),
            float(self.numbers),
            float(self.has_math_ops),
            math.log1p(self.words),
            float(self.question_marks),
            float(self.add_cues),
            float(self.sub_cues),
            float(self.mul_cues),
            float(self.div_cues),
            float(self.op_symbols),
            float(self.is_word_problem),
            float(self.min_number_digits),
            float(self.log10_max_number),
            float(self.log10_number_product),
        ]

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


_BOOL_FIELDS = frozenset(
    {"tool_choice_required", "tool_choice_none", "has_math_ops", "is_word_problem"}
)
_FLOAT_FIELDS = frozenset({"log10_max_number", "log10_number_product"})


def _log10_1p(digit_run: str) -> float:
    """log10(1 + int(digit_run)), also for runs too long for int() or float()."""
    head = digit_run.lstrip("0")[:15]
    return math.log10(1 + float(head or "0")) + max(0, len(digit_run.lstrip("0")) - 15)

