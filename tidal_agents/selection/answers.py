"""Final-answer extraction and equivalence, the basis of every vote.

`extract_answer` pulls the final answer out of a completion; `canonical_answer`
turns it into a hashable key so that equivalent answers (2 and 2.0, \\boxed{1/2}
and 0.5) fall into the same bucket; `answers_equal` decides equivalence with
math-verify.

math-verify guards its sympy work with ``signal.alarm``, which only works on the
main thread. Off the main thread (the engine's loop, worker threads) we call it
with the timeout off and instead cap the length of what we hand it: extracted
answers are short, and short inputs do not hang sympy.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import unicodedata
from typing import Any

from tidal_agents.errors import TidalConfigError
from tidal_agents.selection.tool_calls import canonical_tool_call, parse_tool_call
from tidal_agents.types import AnswerKind

#: answers longer than this are compared as strings, never handed to sympy
_MAX_MATH_CHARS = 120
#: "text" answers longer than this cannot meaningfully agree; they do not vote
_MAX_TEXT_CHARS = 200
_KINDS = ("text", "math", "tool_call")

# math-verify warns once that its timeout is off; that is our deliberate choice.
logging.getLogger("math_verify").setLevel(logging.ERROR)

_NUMBER = r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+)?|[-+]?\.\d+"
_NUMBER_RE = re.compile(_NUMBER)
_ANSWER_PHRASE = re.compile(r"(?:final answer|answer)\s*(?:is|=|:)\s*:?\s*(.+)", re.IGNORECASE)
_FRAC_RE = re.compile(r"-?\\[dt]?frac\s*(?:\{[^{}]+\}\s*\{[^{}]+\}|\d\d)")
_GSM8K = re.compile(r"####\s*(.+)")
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_INLINE_MATH = re.compile(r"^\$+(.+?)\$+|^\\\((.+?)\\\)|^\\\[(.+?)\\\]")


def _check_kind(kind: str) -> None:
    if kind not in _KINDS:
        raise TidalConfigError(f"answer kind={kind!r}: allowed are text, math, tool_call.")


def _last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...}, honouring nested braces."""
    starts = [m.end() for m in _BOXED.finditer(text)]
    for start in reversed(starts):
        depth = 1
        for i in range(start, len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    content = text[start:i].strip()
                    if content:
                        return content
                    break
    return None


def _clean_number(s: str) -> str:
    s = re.sub(r"\s+", "", s).replace(",", "")
    if s.startswith("+"):
        s = s[1:]
    return s


def _from_phrase_tail(tail: str) -> str | None:
    """Answer after 'the answer is': inline math, else the first number, else the words."""
    tail = tail.strip().splitlines()[0].strip() if tail.strip() else ""
    if not tail:
        return None
    boxed = _last_boxed(tail)
    if boxed:
        return boxed
    m = _INLINE_MATH.match(tail)
    if m:
        return next(g for g in m.groups() if g is not None).strip()
    num = _NUMBER_RE.search(tail)
    if num:
        return _clean_number(num.group(0))
    words = re.split(r"[.;!?](?:\s|$)", tail)[0].strip().strip("*_`\"'")
    return words or None


def _normalise_text(text: str) -> str:
    s = unicodedata.normalize("NFKC", text).casefold()
    s = re.sub(r"\s+", " ", s).strip()
    return s.strip(" \"'`*_").rstrip(".!?;:,").strip()


def extract_answer(text: str, kind: AnswerKind = "math") -> str | None:
    """The final answer in `text`, or None if there is none.

    math: the last ``\\boxed{}``, else a GSM8K ``#### X``, else what follows the
    last "answer is / answer: ", else the last number (thousands commas and a
    leading + removed). text: the same "answer is" phrase if present, else the
    whole text normalised (NFKC, case-folded, whitespace collapsed, outer quotes
    and trailing punctuation stripped), None if longer than 200 characters.
    tool_call: the canonical call string (see `canonical_tool_call`).
    """
    _check_kind(kind)
    if not isinstance(text, str) or not text.strip():
        return None
    if kind == "tool_call":
        call = parse_tool_call(text)
        return canonical_tool_call(call) if call is not None else None
    if kind == "text":
        phrases = list(_ANSWER_PHRASE.finditer(text))
        raw = phrases[-1].group(1) if phrases else text
        norm = _normalise_text(raw)
        return norm if norm and len(norm) <= _MAX_TEXT_CHARS else None
    boxed = _last_boxed(text)
    if boxed:
        return boxed
    gsm = list(_GSM8K.finditer(text))
    if gsm:
        got = _from_phrase_tail(gsm[-1].group(1))
        if got:
            return got
    for m in reversed(list(_ANSWER_PHRASE.finditer(text))):
        got = _from_phrase_tail(m.group(1))
        if got:
            return got
    numbers = list(_NUMBER_RE.finditer(text))
    fracs = list(_FRAC_RE.finditer(text))
    # "\frac{3}{4}" holds numbers too: when it ends the text, it is the answer, not "4"
    if fracs and (not numbers or fracs[-1].end() >= numbers[-1].end()):
        return fracs[-1].group(0).replace(" ", "")
    return _clean_number(numbers[-1].group(0)) if numbers else None


def _timeout() -> int | None:
    # signal.alarm exists only on the main thread; elsewhere the length cap guards us.
    return 3 if threading.current_thread() is threading.main_thread() else None


@functools.lru_cache(maxsize=4096)
def _parse_math(answer: str) -> tuple[Any, ...]:
    """math-verify parse of a short answer; () if it is not mathematics."""
    if len(answer) > _MAX_MATH_CHARS:
        return ()
    from math_verify import parse

    s = answer.strip()
    # Wrapping in $...$ lets the LaTeX extractor see bare expressions like \frac12 or x+1.
    wrapped = s if ("$" in s or "\\boxed" in s) else f"${s}$"
    for candidate in (wrapped, s):
        try:
            parsed = parse(candidate, parsing_timeout=_timeout())
        except Exception:  # math-verify raises on pathological input; treat as unparsable
            parsed = []
        if parsed:
            return tuple(parsed)
    return ()


def _math_key(answer: str) -> str:
    import sympy

    parsed = _parse_math(answer)
    if parsed and isinstance(parsed[0], sympy.Basic):
        expr = parsed[0]
        # "x = 3" votes with "3": the model often names the unknown.
        if isinstance(expr, sympy.Eq) and expr.lhs.is_Symbol:
            expr = expr.rhs
        if expr.is_number:
            try:
                value = complex(expr)
            except (TypeError, ValueError, OverflowError):
                return f"expr:{sympy.srepr(expr)}"
            if value.imag == 0:
                # math-verify compares at 6 decimals; bucket the same way
                r = round(value.real, 6)
                return f"num:{r:.12g}" if r != 0 else "num:0"
            return f"num:{value.real:.12g}{value.imag:+.12g}j"
        return f"expr:{sympy.srepr(expr)}"
    return f"str:{_normalise_text(answer)}"


def canonical_answer(text: str, kind: AnswerKind = "math") -> str | None:
    """Hashable voting key for `text`'s final answer; None if it has none.

    math: numbers become ``num:<value rounded to 6 decimals>`` (so \\boxed{1/2}
    and 0.5 share a key), other expressions their sympy form, the rest the
    normalised string. text / tool_call: the extracted answer itself.
    """
    answer = extract_answer(text, kind)
    if answer is None or kind != "math":
        return answer
    return _math_key(answer)


def answers_equal(a: str, b: str) -> bool:
    """True when two extracted math answers are equivalent (math-verify), or equal as text."""
    if not isinstance(a, str) or not isinstance(b, str):
        raise TidalConfigError(
            f"answers_equal takes two strings, got {type(a).__name__} and {type(b).__name__}."
        )
    if _normalise_text(a) == _normalise_text(b):
        return True
    pa, pb = _parse_math(a), _parse_math(b)
    if not pa or not pb:
        return False
    from math_verify import verify

    try:
        return bool(verify(list(pa), list(pb), timeout_seconds=_timeout()))
    except Exception:  # a comparison sympy cannot do is not an equality
        return False


def has_final_answer(text: str) -> bool:
    """True when `text` states a final answer explicitly (\\boxed{}, ####, 'answer is').

    Stricter than `extract_answer`, whose last-number fallback finds something in
    almost any reasoning: beam search uses this to decide a trace is finished.
    """
    if not isinstance(text, str):
        return False
    if _last_boxed(text) is not None:
        return True
    if any(_from_phrase_tail(m.group(1)) for m in _GSM8K.finditer(text)):
        return True
    return any(_from_phrase_tail(m.group(1)) for m in _ANSWER_PHRASE.finditer(text))
