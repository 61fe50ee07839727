"""Answer extraction, equivalence and selection rules (votes, confidence, scorers)."""

from tidal_agents.selection.answers import answers_equal, canonical_answer, extract_answer
from tidal_agents.selection.tool_calls import (
    canonical_tool_call,
    parse_tool_call,
    parse_tool_calls,
)

__all__ = [
    "answers_equal",
    "canonical_answer",
    "canonical_tool_call",
    "extract_answer",
    "parse_tool_call",
    "parse_tool_calls",
]
