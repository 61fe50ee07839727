"""BFCL multi-turn (Berkeley Function Calling Leaderboard) as an external suite.

Data, function documents, the simulated tool back ends (file system, trading
bot, travel booking, ...: standard-library Python) and the official checker
all come from the `bfcl-eval` package, installed with ``--no-deps``; only its
stdlib-only modules are imported (``eval_checker.multi_turn_eval``).

Protocol (BFCL's multi-turn inference loop): for each user turn, the model is
called with the entry's tools bound; every tool call it makes is executed on
the simulated back end and the result returned as a tool message, until it
answers without a tool call (or `max_steps` calls per turn). The decoded calls
of every step of every turn are then graded by BFCL's `multi_turn_checker`
(final back-end state and execution results must match the ground truth's).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tidal_agents.chat_model import TidalChatModel
from tidal_agents.errors import TidalConfigError
from tidal_agents.evaluation.datasets import DatasetUnavailableError, installed_package_root

INSTALL_HINT = ".venv/bin/pip install --no-deps bfcl-eval==2026.3.23"
CATEGORIES = ("multi_turn_base", "multi_turn_miss_param", "multi_turn_long_context")
#: back-end class -> its function-document file in bfcl_eval/data/multi_turn_func_doc
FUNC_DOC_FILES = {
    "GorillaFileSystem": "gorilla_file_system.json",
    "MathAPI": "math_api.json",
    "MessageAPI": "message_api.json",
    "TwitterAPI": "posting_api.json",
    "TicketAPI": "ticket_api.json",
    "TradingBot": "trading_bot.json",
    "TravelAPI": "travel_booking.json",
    "VehicleControlAPI": "vehicle_control.json",
}
_TYPES = {"dict": "object", "float": "number", "tuple": "array"}


def bfcl_root() -> Path:
    """The installed `bfcl_eval` package folder (BFCL entries and checkers)."""
    return installed_package_root("bfcl_eval", "bfcl-eval", INSTALL_HINT)


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise DatasetUnavailableError(f"{path} is missing; reinstall with: {INSTALL_HINT}")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def to_json_schema(schema: Any) -> Any:
    """BFCL's parameter schema (types 'dict', 'float', ...) as JSON Schema."""
    if isinstance(schema, list):
        return [to_json_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for k, v in schema.items():
        if k == "type" and isinstance(v, str):
            if v == "any":
                continue
            out[k] = _TYPES.get(v, v)
        elif k in ("properties",) and isinstance(v, dict):
            out[k] = {name: to_json_schema(s) for name, s in v.items()}
        else:
            out[k] = to_json_schema(v)
    return out


@dataclass(frozen=True)
class BfclEntry:
    id: str
    turns: tuple[tuple[dict[str, str], ...], ...]
    initial_config: dict[str, Any]
    involved_classes: tuple[str, ...]
    tools: tuple[dict[str, Any], ...]
    ground_truth: tuple[tuple[str, ...], ...]
    raw: dict[str, Any]


def load_entries(category: str = "multi_turn_base", limit: int | None = None) -> list[BfclEntry]:
    """Entries of a multi-turn category, with their OpenAI-format tools and ground truth."""
    if category not in CATEGORIES:
        raise TidalConfigError(f"category={category!r}: allowed are {', '.join(CATEGORIES)}.")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise TidalConfigError(f"limit={limit!r}: allowed is None or an integer >= 1.")
    root = bfcl_root() / "data"
    rows = _jsonl(root / f"BFCL_v4_{category}.json")
    truth = {r["id"]: r["ground_truth"] for r in _jsonl(root / "possible_answer"
                                                        / f"BFCL_v4_{category}.json")}
    docs: dict[str, list[dict[str, Any]]] = {}
    out = []
    for row in rows[:limit] if limit else rows:
        tools = []
        for cls in row["involved_classes"]:
            if cls not in docs:
                docs[cls] = _jsonl(root / "multi_turn_func_doc" / FUNC_DOC_FILES[cls])
            for fn in docs[cls]:
                if fn["name"] in row.get("excluded_function", []):
                    continue
                tools.append({"type": "function", "function": {
                    "name": fn["name"], "description": fn["description"][:400],
                    "parameters": to_json_schema(fn["parameters"]),
                }})
        out.append(BfclEntry(
            id=row["id"],
            turns=tuple(tuple(turn) for turn in row["question"]),
            initial_config=row["initial_config"],
            involved_classes=tuple(row["involved_classes"]),
            tools=tuple(tools),
            ground_truth=tuple(tuple(t) for t in truth[row["id"]]),
            raw=row,
        ))
    return out


def call_string(name: str, args: dict[str, Any]) -> str:
    """A decoded call in BFCL's format: ``name(a='x',b=2)``."""
    if not name.isidentifier():
        raise TidalConfigError(f"tool name {name!r} is not a Python identifier.")
    bad = [k for k in args if not str(k).isidentifier()]
    if bad:
        raise TidalConfigError(f"argument names {bad} are not Python identifiers.")
    return f"{name}(" + ",".join(f"{k}={v!r}" for k, v in args.items()) + ")"


def execute(calls: Sequence[str], entry: BfclEntry, run_id: str) -> list[str]:
    """Run decoded calls on the entry's simulated back ends (state kept per run_id)."""
    from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_utils import (
        execute_multi_turn_func_call,
    )

    results, _ = execute_multi_turn_func_call(
        func_call_list=list(calls), initial_config=entry.initial_config,
        involved_classes=list(entry.involved_classes), model_name=run_id,
        test_entry_id=entry.id, long_context="long_context" in entry.id,
    )
    return [str(r) for r in results]


def check(entry: BfclEntry, decoded: list[list[list[str]]], run_id: str) -> dict[str, Any]:
    """BFCL's official multi-turn check of decoded calls (turn -> step -> calls)."""
    from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_checker import multi_turn_checker

    if len(decoded) != len(entry.ground_truth):
        return {"valid": False, "error_type": "turn_count_mismatch"}
    return multi_turn_checker(decoded, [list(t) for t in entry.ground_truth], entry.raw,
                              entry.id.rsplit("_", 1)[0], run_id)


@dataclass(frozen=True)
class BfclOutcome:
    id: str
    valid: bool
    error_type: str | None
    tool_calls: int
    turns: int
    wall_s: float
    decoded: list[list[list[str]]]


def run_entry(model: Any, entry: BfclEntry, max_steps: int = 4,
              deadline_s: float | None = None) -> BfclOutcome:
    """The multi-turn loop for one entry with a LangChain chat model; graded."""
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

    run_id = f"tidal_{uuid.uuid4().hex[:10]}"
    bound = model.bind_tools(list(entry.tools))
    messages: list[Any] = [SystemMessage(
        "You operate the tools to do what the user asks. Call tools with exact arguments."
    )]
    decoded: list[list[list[str]]] = []
    calls_made = 0
    t0 = time.monotonic()
    for turn in entry.turns:
        for msg in turn:
            messages.append(HumanMessage(msg["content"]) if msg["role"] == "user"
                            else SystemMessage(msg["content"]))
        steps: list[list[str]] = []
        for _ in range(max_steps):
            if deadline_s is not None and time.monotonic() - t0 > deadline_s:
                break
            reply: AIMessage = bound.invoke(messages)
            messages.append(reply)
            if not reply.tool_calls:
                break
            try:
                calls = [call_string(c["name"], c["args"]) for c in reply.tool_calls]
            except TidalConfigError as exc:
                for c in reply.tool_calls:
                    messages.append(ToolMessage(f"Error: {exc}", tool_call_id=c["id"]))
                continue
            results = execute(calls, entry, run_id)
            steps.append(calls)
            calls_made += len(calls)
            for c, r in zip(reply.tool_calls, results, strict=False):
                messages.append(ToolMessage(r[:2000], tool_call_id=c["id"]))
        decoded.append(steps)
    verdict = check(entry, decoded, run_id)
    return BfclOutcome(entry.id, bool(verdict.get("valid")), verdict.get("error_type"),
                       calls_made, len(entry.turns), time.monotonic() - t0, decoded)


def run_suite(model: Any, entries: Sequence[BfclEntry], max_steps: int = 4,
              deadline_s: float | None = None, show: bool = True) -> dict[str, Any]:
    from tqdm import tqdm

    outcomes = [run_entry(model, e, max_steps, deadline_s)
                for e in tqdm(entries, desc="bfcl", disable=not show, file=sys.stderr)]
    return {
        "entries": len(outcomes),
        "accuracy": sum(o.valid for o in outcomes) / max(1, len(outcomes)),
        "mean_tool_calls": sum(o.tool_calls for o in outcomes) / max(1, len(outcomes)),
        "mean_wall_s": sum(o.wall_s for o in outcomes) / max(1, len(outcomes)),
        "error_types": {o.id: o.error_type for o in outcomes if not o.valid},
        "outcomes": [asdict(o) for o in outcomes],
    }


def main(argv: list[str] | None = None) -> int:
    """`python -m tidal_agents.evaluation.bfcl --limit 3`: BFCL multi-turn on TidalChatModel."""
    p = argparse.ArgumentParser(prog="bfcl", description=__doc__.splitlines()[0])
    p.add_argument("--category", choices=CATEGORIES, default="multi_turn_base")
    p.add_argument("--limit", type=int, default=3)
    p.add_argument("--max-steps", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--deadline", type=float, default=None, help="seconds per entry")
    p.add_argument("--model", default=None)
    p.add_argument("--out", type=Path, default=None, help="write the full result JSON here")
    args = p.parse_args(argv)
    model = TidalChatModel(model_name=args.model, max_tokens=args.max_tokens)
    result = run_suite(model, load_entries(args.category, args.limit), args.max_steps,
                       args.deadline)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "outcomes"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
