"""Parse and canonicalise the tool-call JSON the chat model's grammar produces.

The grammar emits ``{"name": str, "arguments": {...}}`` (or a list of them for
parallel calls). Voting compares calls by a canonical string: ids are dropped,
key order does not matter, 2 == 2.0, and unicode is NFC-normalised.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from typing import Any

from tidal_agents.errors import TidalConfigError

ToolCall = dict[str, Any]

# Models sometimes wrap the JSON; strip the wrappers we have seen (code fences,
# hermes-style <tool_call> tags) before decoding.
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)
_TAGS = re.compile(r"^<tool_call>\s*(.*?)\s*</tool_call>$", re.DOTALL)


def _decode(text: str) -> Any:
    s = text.strip()
    for pattern in (_FENCE, _TAGS):
        m = pattern.match(s)
        if m:
            s = m.group(1).strip()
    try:
        return json.loads(s)
    except (json.JSONDecodeError, RecursionError):
        return None


def _one_call(obj: Any) -> ToolCall | None:
    """Normalise one call object to {"name", "arguments"}; None if it is not a call."""
    if not isinstance(obj, dict):
        return None
    # OpenAI wire format nests the call under "function"; LangChain uses "args".
    if isinstance(obj.get("function"), dict):
        obj = obj["function"]
    name = obj.get("name")
    if not isinstance(name, str) or not name.strip():
        return None
    args: Any = obj.get("arguments", obj.get("args", obj.get("parameters", {})))
    if isinstance(args, str):
        # OpenAI sends arguments as a JSON string
        args = _decode(args) if args.strip() else {}
    if args is None:
        args = {}
    if not isinstance(args, dict):
        return None
    return {"name": name.strip(), "arguments": args}


def parse_tool_call(text: str) -> ToolCall | list[ToolCall] | None:
    """Parse a tool call from model output.

    Returns ``{"name": str, "arguments": dict}`` for one call, a list of such
    dicts for a JSON list (parallel calls), or None when `text` is not a
    well-formed call (bad JSON, missing name, non-object arguments, empty list).
    Ids and other keys are dropped.
    """
    if not isinstance(text, str):
        return None
    obj = _decode(text)
    if isinstance(obj, list):
        calls = [_one_call(o) for o in obj]
        if not calls or any(c is None for c in calls):
            return None
        return [c for c in calls if c is not None]
    return _one_call(obj)


def parse_tool_calls(text: str) -> list[ToolCall] | None:
    """Like `parse_tool_call`, but always a list (one element for a single call)."""
    parsed = parse_tool_call(text)
    if parsed is None:
        return None
    return parsed if isinstance(parsed, list) else [parsed]


def _canon_value(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            return repr(value)  # "nan"/"inf": JSON has no literal for them
        if value.is_integer() and abs(value) < 2**63:
            return int(value)
        return value
    if isinstance(value, str):
        return unicodedata.normalize("NFC", value)
    if isinstance(value, dict):
        return {unicodedata.normalize("NFC", str(k)): _canon_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canon_value(v) for v in value]
    return repr(value)


def canonical_tool_call(call: ToolCall | list[ToolCall]) -> str:
    """A string equal for calls that do the same thing.

    Accepts what `parse_tool_call` returns, or raw call dicts (OpenAI / LangChain
    shapes; ids ignored). Parallel calls are order-independent: they are sorted.
    """
    if isinstance(call, list):
        parts = sorted(canonical_tool_call(c) for c in call)
        return "[" + ",".join(parts) + "]"
    norm = _one_call(call)
    if norm is None:
        raise TidalConfigError(
            f"canonical_tool_call: {call!r} is not a tool call; "
            "expected a dict with a non-empty 'name' and object 'arguments'."
        )
    body = {"name": norm["name"], "arguments": _canon_value(norm["arguments"])}
    return json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
