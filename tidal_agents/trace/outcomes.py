"""What counts as a usable reply, and the four ways an episode can end.

One definition serves the step pipeline, the trace summary and every bench:

- a *usable reply* is a final AI message with non-empty content that is not a
  fragment of the tool protocol (``{``, ``{"name``, a half-written call, or a
  protocol object such as ``{"answer": ...}`` leaking into the content);
- an episode ends in one of four ways: ``usable`` (returned by the deadline with a
  usable reply), ``no_usable_reply`` (returned by the deadline with an empty reply,
  a fragment, or only an invalid tool call), ``error`` (raised, by the deadline),
  ``over_deadline`` (returned or raised after the deadline).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from typing import Any, Literal

#: keys of the JSON objects the tool protocol decodes (tool_protocol.reply_grammar)
PROTOCOL_KEYS = frozenset({"answer", "name", "arguments", "tool_calls"})

EpisodeOutcome = Literal["usable", "no_usable_reply", "error", "over_deadline"]
OUTCOMES: tuple[EpisodeOutcome, ...] = ("usable", "no_usable_reply", "error", "over_deadline")
#: the rate keys benches report, one per outcome, in OUTCOMES order
RATE_KEYS = {
    "usable": "usable_within_deadline_rate",
    "no_usable_reply": "no_usable_reply_rate",
    "error": "error_rate",
    "over_deadline": "over_deadline_rate",
}


def is_protocol_fragment(text: str) -> bool:
    """True for tool-protocol JSON in a reply's content: anything starting with
    ``{`` or ``[`` that does not parse (a cut-short call or answer), or that parses
    to a protocol object."""
    stripped = text.strip()
    if not stripped.startswith(("{", "[")):
        return False
    try:
        obj = json.loads(stripped)
    except (ValueError, RecursionError):
        return True
    if isinstance(obj, list):
        return any(isinstance(item, dict) and PROTOCOL_KEYS & set(item) for item in obj)
    return isinstance(obj, dict) and bool(PROTOCOL_KEYS & set(obj))


def content_text(content: Any) -> str:
    """A message's content as text (LangChain content blocks joined)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [
            b if isinstance(b, str) else str(b.get("text", "")) if isinstance(b, dict) else ""
            for b in content
        ]
        return "".join(parts)
    return ""


def is_usable_reply(message: Any) -> bool:
    """A final AI message with non-empty content that is not a protocol fragment."""
    if message is None or getattr(message, "type", None) not in ("ai", "AIMessageChunk"):
        return False
    text = content_text(getattr(message, "content", ""))
    return bool(text.strip()) and not is_protocol_fragment(text)


def classify_episode(
    final_message: Any, wall_s: float, deadline_s: float, raised: bool
) -> EpisodeOutcome:
    """The episode's outcome; after the deadline counts first, then an error."""
    if wall_s > deadline_s:
        return "over_deadline"
    if raised:
        return "error"
    return "usable" if is_usable_reply(final_message) else "no_usable_reply"


def outcome_rates(outcomes: Iterable[EpisodeOutcome]) -> dict[str, float | None]:
    """Each outcome's share, under the bench keys of RATE_KEYS (None when empty)."""
    counts = Counter(outcomes)
    total = sum(counts.values())
    return {
        RATE_KEYS[o]: (counts[o] / total if total else None) for o in OUTCOMES
    }
