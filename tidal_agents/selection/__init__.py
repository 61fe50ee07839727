"""Answer extraction, equivalence and selection rules (votes, confidence, scorers)."""

from tidal_agents.selection.answers import (
    answers_equal,
    canonical_answer,
    extract_answer,
    has_final_answer,
)
from tidal_agents.selection.confidence import confidence
from tidal_agents.selection.scorers import Scorer, VLLMPoolingScorer
from tidal_agents.selection.tool_calls import (
    canonical_tool_call,
    parse_tool_call,
    parse_tool_calls,
)
from tidal_agents.selection.voting import Selection, select, select_by_scorer, vote

__all__ = [
    "Scorer",
    "Selection",
    "VLLMPoolingScorer",
    "answers_equal",
    "canonical_answer",
    "canonical_tool_call",
    "confidence",
    "extract_answer",
    "has_final_answer",
    "parse_tool_call",
    "parse_tool_calls",
    "select",
    "select_by_scorer",
    "vote",
]
