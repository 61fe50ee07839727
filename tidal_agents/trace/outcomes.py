"""What counts as a usable reply, and the four ways an episode can end.

One definition serves the step pipeline, the trace summary and every bench:

- a *usable reply* is a final AI message with non-empty content that is not a
  fragment of the tool protocol (``{``, ``{"name``, a half-written call, or a
  protocol object such as ``{"answer": ...}`` leaking into the content) and was
  not truncated (its ``finish_reason`` is not one of `TRUNCATED`: cut off by the
  token limit or by the step's time);
- an episode ends in one of four ways: ``usable`` (returned by the deadline with a
  usable reply), ``no_usable_reply`` (returned by the deadline with an empty reply,
  a fragment, or only an invalid tool call), ``error`` (raised, by the deadline),
  ``over_deadline`` (returned or raised after the deadline).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
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


#: finish reasons of a reply that was cut off: by max_tokens, or by the step's time
TRUNCATED = frozenset({"length", "timeout", "abort"})


def is_truncated(message: Any) -> bool:
    """The message says its text was cut off (``response_metadata.finish_reason``)."""
    metadata = getattr(message, "response_metadata", None) or {}
    return metadata.get("finish_reason") in TRUNCATED


def is_usable_reply(message: Any) -> bool:
    """A final AI message with non-empty content that is not a protocol fragment and
    was not truncated."""
    if message is None or getattr(message, "type", None) not in ("ai", "AIMessageChunk"):
        return False
    text = content_text(getattr(message, "content", ""))
    return bool(text.strip()) and not is_protocol_fragment(text) and not is_truncated(message)


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


#: the error text of a step that returned, but with nothing usable (step.pipeline)
NO_USABLE_REPLY = "no usable reply"


def trace_outcome(
    records: Sequence[Any], deadline_s: float | None, started_at: float | None
) -> EpisodeOutcome | None:
    """An episode's outcome read from its step records alone (None: no steps).

    After the deadline: the last step ended past it. An error: a step raised (its
    record has an error other than "no usable reply"). Usable: the last step
    answered with a usable reply (finish "answer"). Anything else (the last step a
    tool call, a truncated answer, or no usable reply) is no usable reply.
    """
    if not records:
        return None
    last = records[-1]
    if deadline_s is not None and started_at is not None and (
        last.ended_at - started_at > deadline_s
    ):
        return "over_deadline"
    if any(r.error and not r.error.startswith(NO_USABLE_REPLY) for r in records):
        return "error"
    return "usable" if last.finish == "answer" and last.error is None else "no_usable_reply"


def trace_summary(
    records: Sequence[Any], deadline_s: float | None, started_at: float | None
) -> dict[str, Any]:
    """Steps, cut-short steps, generated tokens, wall time and the outcome."""
    steps = len(records)
    wall = (records[-1].ended_at - started_at) if records and started_at is not None else None
    return {
        "steps": steps,
        "cut_short_steps": sum(bool(r.cut_short) for r in records),
        "generated_tokens": sum(r.spent.generated_tokens for r in records if r.spent),
        "wall_s": wall,
        "deadline_s": deadline_s,
        "outcome": trace_outcome(records, deadline_s, started_at),
    }
