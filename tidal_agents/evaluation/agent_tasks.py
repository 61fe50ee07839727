"""Multi-step tool-use episodes with checkable final answers.

Sized for a 135M model (tool *selection* is its weak point; see
docs/design-notes.md, 'Tool calls from a small model'): four tools with plain
names and one or two number arguments, and tasks that need one to three tool
calls in a fixed order. Every task is generated from a seed and carries its gold
number, so an episode is graded without a judge: success means the agent's final
message states the gold number (within 1e-2 relative). Whether some tool
returned the gold number is recorded separately (the model computed it but may
not have said it).
"""

from __future__ import annotations

import functools
import math
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from langchain_core.tools import ToolException

from tidal_agents.errors import TidalConfigError
from tidal_agents.evaluation.tasks import chosen_kinds

#: prices of the lookup tool (dollars per item)
PRICES: dict[str, float] = {"apple": 3.0, "pen": 2.0, "book": 12.0, "cup": 5.0, "hat": 15.0}
KM_PER_MILE = 1.609344


def add(a: float, b: float) -> float:
    """Add two numbers."""
    return round(a + b, 4)


def multiply(a: float, b: float) -> float:
    """Multiply two numbers."""
    return round(a * b, 4)


def km_to_miles(km: float) -> float:
    """Convert a distance in kilometres to miles."""
    return round(km / KM_PER_MILE, 2)


class UnknownItemError(ToolException, ValueError):
    """The lookup tool does not know the item (reported back to the model)."""


def get_price(item: str) -> float:
    """Look up the price in dollars of one item (apple, pen, book, cup or hat)."""
    key = item.strip().lower().rstrip("s")
    if key not in PRICES:
        raise UnknownItemError(f"unknown item {item!r}; known items: {', '.join(PRICES)}")
    return PRICES[key]


TOOL_FUNCTIONS: dict[str, Callable[..., float]] = {
    "add": add, "multiply": multiply, "km_to_miles": km_to_miles, "get_price": get_price,
}


def langchain_tools(names: tuple[str, ...] | None = None, delay_s: float = 0.0) -> list[Any]:
    """The tools as LangChain tools (errors go back to the model as tool messages).

    `delay_s`: each call sleeps this long first, like a tool that waits on a service.
    """
    from langchain_core.tools import StructuredTool

    chosen = names or tuple(TOOL_FUNCTIONS)
    unknown = [n for n in chosen if n not in TOOL_FUNCTIONS]
    if unknown:
        raise TidalConfigError(f"unknown tools {unknown}; allowed: {sorted(TOOL_FUNCTIONS)}.")
    return [
        StructuredTool.from_function(
            _slowed(TOOL_FUNCTIONS[n], delay_s), name=n, handle_tool_error=True
        )
        for n in chosen
    ]


def _slowed(fn: Callable[..., Any], delay_s: float) -> Callable[..., Any]:
    if delay_s <= 0:
        return fn

    @functools.wraps(fn)
    def slow(*args: Any, **kwargs: Any) -> Any:
        time.sleep(delay_s)
        return fn(*args, **kwargs)

    return slow


@dataclass(frozen=True)
class AgentTask:
    """One episode: a question, the tools offered, the gold number, the intended calls."""

    id: str
    question: str
    tools: tuple[str, ...]
    gold: float
    #: the tool calls a correct solution makes, in order (for reporting only)
    plan: tuple[str, ...]
    kind: str

    @property
    def expected_steps(self) -> int:
        """Model calls a correct solution makes: one per planned tool call, one answer."""
        return len(self.plan) + 1

    def __post_init__(self) -> None:
        if not self.question.strip() or not self.tools or not math.isfinite(self.gold):
            raise TidalConfigError(f"AgentTask {self.id!r}: needs a question, tools and a gold.")


def _multiply_task(r: random.Random) -> tuple[str, tuple[str, ...], float, tuple[str, ...]]:
    a, b = r.randint(11, 99), r.randint(3, 19)
    return f"What is {a} times {b}?", ("multiply", "add"), float(a * b), ("multiply",)


def _convert_task(r: random.Random) -> tuple[str, tuple[str, ...], float, tuple[str, ...]]:
    km = r.choice([5, 10, 21, 42, 50, 80, 100, 160])
    return (f"How many miles is {km} km?", ("km_to_miles", "multiply"),
            km_to_miles(km), ("km_to_miles",))


def _price_task(r: random.Random) -> tuple[str, tuple[str, ...], float, tuple[str, ...]]:
    item, n = r.choice(list(PRICES)), r.randint(2, 9)
    return (f"How much do {n} {item}s cost in dollars? Look up the price of one {item} first.",
            ("get_price", "multiply"), PRICES[item] * n, ("get_price", "multiply"))


def _add_then_multiply(r: random.Random) -> tuple[str, tuple[str, ...], float, tuple[str, ...]]:
    a, b, c = r.randint(10, 60), r.randint(10, 60), r.randint(2, 9)
    return (f"Add {a} and {b}, then multiply the sum by {c}. What is the result?",
            ("add", "multiply"), float((a + b) * c), ("add", "multiply"))


def _convert_then_add(r: random.Random) -> tuple[str, tuple[str, ...], float, tuple[str, ...]]:
    km, extra = r.choice([10, 20, 40, 100]), r.randint(2, 30)
    return (f"Convert {km} km to miles, then add {extra} miles. How many miles in total?",
            ("km_to_miles", "add"), round(km_to_miles(km) + extra, 2), ("km_to_miles", "add"))


def _multiply_only(r: random.Random) -> tuple[str, tuple[str, ...], float, tuple[str, ...]]:
    a, b = r.randint(11, 99), r.randint(3, 19)
    return f"What is {a} times {b}?", ("multiply",), float(a * b), ("multiply",)


def _add_only(r: random.Random) -> tuple[str, tuple[str, ...], float, tuple[str, ...]]:
    a, b = r.randint(11, 99), r.randint(11, 99)
    return f"What is {a} plus {b}?", ("add",), float(a + b), ("add",)


def _convert_only(r: random.Random) -> tuple[str, tuple[str, ...], float, tuple[str, ...]]:
    km = r.choice([5, 10, 21, 42, 50, 80, 100, 160])
    return f"How many miles is {km} km?", ("km_to_miles",), km_to_miles(km), ("km_to_miles",)


def _price_lookup(r: random.Random) -> tuple[str, tuple[str, ...], float, tuple[str, ...]]:
    item = r.choice(list(PRICES))
    return (f"How much does one {item} cost in dollars?", ("get_price",), PRICES[item],
            ("get_price",))


AGENT_TASK_KINDS: dict[str, Callable[[random.Random], tuple[str, tuple[str, ...], float,
                                                            tuple[str, ...]]]] = {
    "multiply": _multiply_task,
    "convert": _convert_task,
    "price": _price_task,
    "add-multiply": _add_then_multiply,
    "convert-add": _convert_then_add,
    "multiply-only": _multiply_only,
    "add-only": _add_only,
    "convert-only": _convert_only,
    "price-lookup": _price_lookup,
}

#: kinds solved by one tool call and an answer (2 model steps); "multiply" and
#: "convert" also offer a second, wrong tool. The embedded 135M model solves some
#: of these and almost none of the two-call chains (docs/evaluation.md).
ONE_CALL_KINDS: tuple[str, ...] = (
    "multiply-only", "add-only", "convert-only", "price-lookup", "multiply", "convert",
)


def agent_tasks(count: int, seed: int = 0, kinds: tuple[str, ...] | None = None) -> list[AgentTask]:
    """`count` tasks, round robin over `kinds` (default: all of AGENT_TASK_KINDS)."""
    chosen = chosen_kinds(count, kinds, AGENT_TASK_KINDS, "agent task")
    r = random.Random(seed)
    out = []
    for i in range(count):
        kind = chosen[i % len(chosen)]
        question, tools, gold, plan = AGENT_TASK_KINDS[kind](r)
        out.append(AgentTask(f"agent-s{seed}-{i:03d}", question, tools, gold, plan, kind))
    return out


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def states_number(text: str, gold: float, rel_tol: float = 1e-2) -> bool:
    """True if any number written in `text` equals `gold` within `rel_tol`."""
    for m in _NUMBER.finditer(text or ""):
        try:
            value = float(m.group(0).replace(",", ""))
        except ValueError:
            continue
        if math.isclose(value, gold, rel_tol=rel_tol, abs_tol=1e-2):
            return True
    return False


@dataclass(frozen=True)
class EpisodeGrade:
    success: bool
    tool_result_correct: bool
    tool_calls: tuple[str, ...]
    final_text: str


def grade_messages(task: AgentTask, messages: list[Any]) -> EpisodeGrade:
    """Grade a finished episode from its LangChain messages."""
    from langchain_core.messages import AIMessage, ToolMessage

    calls: list[str] = []
    tool_ok = False
    for m in messages:
        if isinstance(m, AIMessage):
            calls += [c["name"] for c in (m.tool_calls or [])]
        if isinstance(m, ToolMessage) and states_number(str(m.content), task.gold):
            tool_ok = True
    final = next((m for m in reversed(messages) if isinstance(m, AIMessage)), None)
    text = final.content if final is not None and isinstance(final.content, str) else ""
    answered = final is not None and not final.tool_calls
    return EpisodeGrade(
        success=answered and states_number(text, task.gold),
        tool_result_correct=tool_ok,
        tool_calls=tuple(calls),
        final_text=text[:300],
    )
