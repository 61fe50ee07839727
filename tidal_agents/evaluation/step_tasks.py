"""Agent steps with checkable outcomes, as the chat model receives them.

Every step kind an agent produces, each a conversation (LangChain messages)
plus the tools bound and a grader of the step's reply:

* ``text``: a free-text question (graded arithmetic, GSM8K), no tools; right
  when the reply's final number equals the gold answer;
* ``tool_call``: the first step of an agent task (`agent_tasks`), its tools
  bound, with or without a distractor tool; right when the reply calls the
  planned tool with arguments that give the planned result;
* ``tool_answer``: the step after the planned tool results are in; right when
  the reply answers (no call) and states the gold number;

each agent step twice: with tool_choice "auto", and as an agent that requires
the first call and an answer once its results are in asks for it
(`ToolFirstMiddleware`: "any" on the call step, "none" on the answer step).
* a task file's own steps (`file_steps`, ``tidal-agents collect --tasks``).

`collect` renders each step with the chat model's own `prepare_step`.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)

from tidal_agents import tool_protocol as tp
from tidal_agents.errors import TidalConfigError
from tidal_agents.evaluation.agent_tasks import (
    TOOL_FUNCTIONS,
    AgentTask,
    agent_tasks,
    langchain_tools,
    states_number,
)
from tidal_agents.evaluation.tasks import TaskItem
from tidal_agents.selection.answers import answers_equal, extract_answer
from tidal_agents.selection.tool_calls import canonical_tool_call

StepKind = Literal["text", "tool_call", "tool_answer"]
#: one planned tool call: (tool name, arguments)
PlannedCall = tuple[str, dict[str, Any]]


@dataclass(frozen=True)
class StepTask:
    """One agent step with a checkable outcome."""

    id: str
    #: 'arith', 'gsm8k', 'math500' or 'agent'
    source: str
    #: a difficulty tag: the arithmetic kind, 'gsm8k', or '<agent kind>/<step kind>'
    difficulty: str
    #: the question the user asked (the step's last human message)
    question: str
    #: the gold final answer (a number as text) or, for tool-call steps, the planned
    #: call's result
    gold: str
    messages: tuple[BaseMessage, ...]
    #: names of the agent tools bound (none for text steps)
    tools: tuple[str, ...] = ()
    #: 0-based model call of the episode this step is
    step_index: int = 0
    #: tool-call steps: the call a right reply makes
    expected_call: PlannedCall | None = None
    #: tools given as OpenAI tool dicts (a task file's own tools), bound besides `tools`
    tool_specs: tuple[dict[str, Any], ...] = ()
    #: the call's tool_choice: "auto" (None), "any" (a call is required) or "none" (an
    #: answer is required)
    tool_choice: str | None = None

    @property
    def kind(self) -> StepKind:
        if not self.tools and not self.tool_specs:
            return "text"
        return "tool_answer" if isinstance(self.messages[-1], ToolMessage) else "tool_call"

    def bound_tools(self) -> list[Any]:
        return [*(langchain_tools(self.tools) if self.tools else []), *self.tool_specs]


def text_steps(items: Sequence[TaskItem]) -> list[StepTask]:
    """Free-text question steps from task items (the user message of `TaskItem.messages`)."""
    return [
        StepTask(id=i.id, source=i.source, difficulty=i.difficulty, question=i.question,
                 gold=i.gold, messages=(HumanMessage(i.messages()[-1]["content"]),))
        for i in items
    ]


_INT = r"(\d+)"
#: agent task kind -> (question pattern, the planned calls from its groups)
_PLANS: dict[str, tuple[re.Pattern[str], Callable[[tuple[str, ...]], list[PlannedCall]]]] = {
    "multiply": (re.compile(rf"What is {_INT} times {_INT}"),
                 lambda g: [("multiply", {"a": int(g[0]), "b": int(g[1])})]),
    "multiply-only": (re.compile(rf"What is {_INT} times {_INT}"),
                      lambda g: [("multiply", {"a": int(g[0]), "b": int(g[1])})]),
    "add-only": (re.compile(rf"What is {_INT} plus {_INT}"),
                 lambda g: [("add", {"a": int(g[0]), "b": int(g[1])})]),
    "convert": (re.compile(rf"How many miles is {_INT} km"),
                lambda g: [("km_to_miles", {"km": int(g[0])})]),
    "convert-only": (re.compile(rf"How many miles is {_INT} km"),
                     lambda g: [("km_to_miles", {"km": int(g[0])})]),
    "price-lookup": (re.compile(r"How much does one (\w+) cost"),
                     lambda g: [("get_price", {"item": g[0]})]),
    "price": (re.compile(rf"How much do {_INT} (\w+?)s cost"),
              lambda g: [("get_price", {"item": g[1]}), ("multiply", {"a": None, "b": int(g[0])})]),
    "add-multiply": (re.compile(rf"Add {_INT} and {_INT}, then multiply the sum by {_INT}"),
                     lambda g: [("add", {"a": int(g[0]), "b": int(g[1])}),
                                ("multiply", {"a": None, "b": int(g[2])})]),
    "convert-add": (re.compile(rf"Convert {_INT} km to miles, then add {_INT} miles"),
                    lambda g: [("km_to_miles", {"km": int(g[0])}),
                               ("add", {"a": None, "b": int(g[1])})]),
}


def planned_calls(task: AgentTask) -> list[tuple[str, dict[str, Any], float]]:
    """The calls a right solution of `task` makes, each with its result.

    An argument None is the previous call's result (a chain)."""
    entry = _PLANS.get(task.kind)
    match = entry[0].search(task.question) if entry else None
    if entry is None or match is None:
        raise TidalConfigError(f"agent task kind {task.kind!r}: no call plan for "
                               f"{task.question!r}; allowed kinds: {sorted(_PLANS)}.")
    out: list[tuple[str, dict[str, Any], float]] = []
    previous: float | None = None
    for name, args in entry[1](match.groups()):
        filled = {k: (previous if v is None else v) for k, v in args.items()}
        previous = float(TOOL_FUNCTIONS[name](**filled))
        out.append((name, filled, previous))
    return out


def agent_steps(count: int, seed: int = 0) -> list[StepTask]:
    """For `count` agent tasks: the tool-call step and the answer step after the planned
    results, each under tool_choice "auto" and as `ToolFirstMiddleware` asks (see the
    module docstring). Every other task binds a distractor tool besides the tools it
    needs."""
    rng = random.Random(f"distractor:{seed}")
    out: list[StepTask] = []
    for i, task in enumerate(agent_tasks(count, seed=seed)):
        calls = planned_calls(task)
        needed = tuple(dict.fromkeys(name for name, _, _ in calls))
        tools = needed
        if i % 2 == 1:
            others = sorted(set(TOOL_FUNCTIONS) - set(needed))
            tools = (*needed, rng.choice(others))
        tag = "distractor" if len(tools) > len(needed) else "plain"
        human = HumanMessage(task.question)
        first_name, first_args, first_result = calls[0]
        for choice, suffix in _CHOICES["call"]:
            out.append(StepTask(
                id=f"{task.id}-call{suffix}", source="agent",
                difficulty=f"{task.kind}/call{suffix}/{tag}", question=task.question,
                gold=_number(first_result), messages=(human,), tools=tools, step_index=0,
                expected_call=(first_name, first_args), tool_choice=choice,
            ))
        history: list[BaseMessage] = [human]
        for k, (name, args, result) in enumerate(calls):
            call_id = f"call_{task.id}_{k}"
            history.append(AIMessage(content="", tool_calls=[
                {"name": name, "args": args, "id": call_id, "type": "tool_call"}]))
            history.append(ToolMessage(content=str(result), tool_call_id=call_id, name=name))
        for choice, suffix in _CHOICES["answer"]:
            out.append(StepTask(
                id=f"{task.id}-answer{suffix}", source="agent",
                difficulty=f"{task.kind}/answer{suffix}/{tag}", question=task.question,
                gold=_number(task.gold), messages=tuple(history), tools=tools,
                step_index=len(calls), tool_choice=choice,
            ))
    return out


#: agent step -> (tool_choice, id suffix): auto, and as `ToolFirstMiddleware` asks
_CHOICES: dict[str, tuple[tuple[str | None, str], ...]] = {
    "call": ((None, ""), ("any", "-required")),
    "answer": ((None, ""), ("none", "-none")),
}


def query_group(query_id: str) -> str:
    """The agent task a step belongs to (its call and answer steps, under every
    tool_choice, share one group); other steps are their own group. Held-out
    splits and cross-validation folds keep a group together."""
    head, sep, tail = query_id.rpartition("-")
    if not sep:
        return query_id
    if tail in ("required", "none"):
        head, sep, tail = head.rpartition("-")
    return head if sep and tail in ("call", "answer") else query_id


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def grade(task: StepTask, reply: tp.ParsedReply) -> bool:
    """Whether the step's parsed reply is right (see the module docstring). A gold that
    is not a number is compared as text (normalised, or contained in an answer after a
    tool result); a call of a task file's own tool must equal the expected call."""
    if task.kind in ("text", "tool_answer") and reply.tool_calls:
        return False
    if task.kind == "text":
        answer = extract_answer(reply.content, "math")
        if answer is not None and answers_equal(answer, task.gold):
            return True
        return not _is_number(task.gold) and _same_text(reply.content, task.gold)
    if task.kind == "tool_answer":
        if _is_number(task.gold):
            return states_number(reply.content, float(task.gold))
        return _normalised(task.gold) in _normalised(reply.content)
    if not reply.tool_calls or task.expected_call is None:
        return False
    call = reply.tool_calls[0]
    name, args = task.expected_call
    if call["name"] != name:
        return False
    if name not in TOOL_FUNCTIONS or name not in task.tools:
        return canonical_tool_call({"name": name, "arguments": call["args"]}) == \
            canonical_tool_call({"name": name, "arguments": args})
    try:
        got = float(TOOL_FUNCTIONS[name](**call["args"]))
    except Exception:  # wrong argument names or values: not the planned call
        return False
    return math.isclose(got, float(task.gold), rel_tol=1e-6, abs_tol=1e-6)


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _normalised(text: str) -> str:
    return " ".join(text.casefold().split()).strip(" .!?\"'")


def _same_text(reply: str, gold: str) -> bool:
    answer = extract_answer(reply, "text")
    return answer is not None and _normalised(answer) == _normalised(gold)


#: roles of a task file's chat messages
_ROLES = ("system", "user", "assistant", "tool")


def file_steps(path: Path) -> list[StepTask]:
    """Steps from a JSONL task file, one JSON object per line:

    * ``prompt`` (one user message) or ``messages`` (chat dicts with ``role`` system,
      user, assistant or tool and ``content``; an assistant turn may carry
      ``tool_calls`` [{"id", "name", "arguments"}], a tool turn a ``tool_call_id``);
    * ``gold``: the final answer (a number or text), or for a step that must call a
      tool, the call: {"name": ..., "arguments": {...}};
    * optional ``tools``: OpenAI tool dicts, or names of the built-in agent tools
      (add, multiply, km_to_miles, get_price); optional ``tool_choice`` as your
      agent binds it ("auto", the default; "any" or "required": a call is
      required; "none": an answer is required); optional ``id`` and ``tag``.

    The step kind follows from the tools and the last message, as for the chat model.
    """
    if not path.is_file():
        raise TidalConfigError(f"--tasks {path}: no such file.")
    out: list[StepTask] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            out.append(_file_step(json.loads(line), f"{path.name}:{number}"))
    if not out:
        raise TidalConfigError(f"--tasks {path}: the file holds no tasks.")
    return out


#: a task file's tool_choice -> `StepTask.tool_choice`
_FILE_TOOL_CHOICES: dict[str, str | None] = {"auto": None, "any": "any", "required": "any",
                                             "none": "none"}


def _file_step(obj: Any, where: str) -> StepTask:
    if not isinstance(obj, dict) or "gold" not in obj or not (
        isinstance(obj.get("prompt"), str) or isinstance(obj.get("messages"), list)
    ):
        raise TidalConfigError(f"{where}: a task needs 'gold' and 'prompt' (a string) or "
                               "'messages' (a list of chat dicts).")
    messages = ((HumanMessage(obj["prompt"]),) if isinstance(obj.get("prompt"), str)
                else tuple(_message(m, f"{where} messages[{i}]")
                           for i, m in enumerate(obj["messages"])))
    names = tuple(t for t in obj.get("tools", ()) if isinstance(t, str))
    specs = tuple(t for t in obj.get("tools", ()) if isinstance(t, dict))
    unknown = [n for n in names if n not in TOOL_FUNCTIONS]
    if unknown:
        raise TidalConfigError(f"{where}: unknown built-in tools {unknown}; allowed names: "
                               f"{sorted(TOOL_FUNCTIONS)}, or OpenAI tool dicts.")
    gold, expected = obj["gold"], None
    if isinstance(gold, dict):
        if not isinstance(gold.get("name"), str) or not isinstance(gold.get("arguments"), dict):
            raise TidalConfigError(f"{where}: a call gold needs 'name' and 'arguments'.")
        expected = (gold["name"], gold["arguments"])
        result = (TOOL_FUNCTIONS[gold["name"]](**gold["arguments"])
                  if gold["name"] in names else json.dumps(gold, sort_keys=True))
        gold = _number(result) if isinstance(result, float) else result
    choice = obj.get("tool_choice", "auto")
    if choice not in _FILE_TOOL_CHOICES or (choice != "auto" and not obj.get("tools")):
        raise TidalConfigError(f"{where}: tool_choice={choice!r}; allowed are "
                               f"{list(_FILE_TOOL_CHOICES)}, and only with 'tools'.")
    question = next((m.text for m in reversed(messages) if isinstance(m, HumanMessage)), "")
    step = StepTask(id=str(obj.get("id", where)), source="file", difficulty=str(obj.get("tag",
                    "file")), question=question, gold=str(gold), messages=messages,
                    tools=names, expected_call=expected, tool_specs=specs,
                    step_index=sum(isinstance(m, AIMessage) for m in messages),
                    tool_choice=_FILE_TOOL_CHOICES[choice])
    if expected is not None and step.kind != "tool_call":
        raise TidalConfigError(f"{where}: a call gold needs tools and a last message that is "
                               "not a tool result.")
    return step


def _message(m: Any, where: str) -> BaseMessage:
    if not isinstance(m, dict) or m.get("role") not in _ROLES:
        raise TidalConfigError(f"{where}: a chat dict with 'role' in {_ROLES} is needed.")
    content = str(m.get("content") or "")
    if m["role"] == "system":
        return SystemMessage(content)
    if m["role"] == "user":
        return HumanMessage(content)
    if m["role"] == "tool":
        return ToolMessage(content, tool_call_id=str(m.get("tool_call_id", "")))
    calls = [{"name": c["name"], "args": c.get("arguments", {}), "id": str(c.get("id", "")),
              "type": "tool_call"} for c in m.get("tool_calls", ())]
    return AIMessage(content, tool_calls=calls)
