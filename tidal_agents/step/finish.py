"""Finish: candidate preference, parsing, the loop guard's test, usage, the
response metadata and the trace record of one step."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.messages.tool import InvalidToolCall

from tidal_agents import tool_protocol as tp
from tidal_agents.allocation import StepFeatures
from tidal_agents.allocation.controller import StepDecision
from tidal_agents.episode import Episode
from tidal_agents.selection.tool_calls import canonical_tool_call
from tidal_agents.trace.records import StepRecord
from tidal_agents.types import Candidate, CostRecord, StrategyConfig, StrategyResult

PROVIDER = "tidal_agents"


def prefer_complete(result: StrategyResult) -> StrategyResult:
    """A grammar reply cut short (max_tokens, deadline) is not valid output: prefer
    the best complete candidate when the strategy drew several."""
    if result.selected.finish_reason == "stop":
        return result
    complete = [c for c in result.candidates if c.finish_reason == "stop"]
    if not complete:
        return result
    best = max(complete, key=_candidate_rank)
    return replace(result, selected=best, details={**result.details, "complete_preferred": True})


def _candidate_rank(c: Candidate) -> tuple[float, float]:
    return (
        c.score if c.score is not None else -math.inf,
        c.mean_logprob if c.mean_logprob is not None else -math.inf,
    )


def repeats_answered_call(calls: list[dict[str, Any]], messages: Sequence[BaseMessage]) -> bool:
    """True if every call repeats one whose result is already in the conversation."""
    answered_ids = {m.tool_call_id for m in messages if isinstance(m, ToolMessage)}
    answered = {
        canonical_tool_call({"name": c["name"], "arguments": c["args"]})
        for m in messages if isinstance(m, AIMessage)
        for c in m.tool_calls if c.get("id") in answered_ids
    }
    return bool(answered) and all(
        canonical_tool_call({"name": c["name"], "arguments": c["args"]}) in answered
        for c in calls
    )


def usage_metadata(cost: CostRecord) -> UsageMetadata:
    return UsageMetadata(
        input_tokens=cost.prompt_tokens,
        output_tokens=cost.generated_tokens,
        total_tokens=cost.prompt_tokens + cost.generated_tokens,
        input_token_details={"cache_read": cost.cached_prompt_tokens},
    )


@dataclass(frozen=True)
class StepContext:
    """Where a step runs: its episode (if any), index, graph position and start."""

    episode: Episode | None
    step_index: int
    metadata: Mapping[str, Any]
    started_wall: float
    time_left_before_s: float | None


def step_record(
    context: StepContext,
    decision: StepDecision,
    features: StepFeatures,
    result: StrategyResult | None,
    error: str | None,
    finish: str | None = None,
    tool_calls: Sequence[str] = (),
) -> StepRecord:
    return step_record_builder(
        context, decision, features, result, error, finish=finish, tool_calls=tool_calls
    )()


def step_record_builder(
    context: StepContext,
    decision: StepDecision,
    features: StepFeatures,
    result: StrategyResult | None,
    error: str | None,
    finish: str | None = None,
    tool_calls: Sequence[str] = (),
) -> Callable[[], StepRecord]:
    """The step's record as of now, to be built when read: what changes with time
    (the clock, the episode's time left, the caller's metadata) is read now, so the
    record is the same whenever it is built."""
    episode = context.episode
    fields: dict[str, Any] = {
        "episode_id": episode.id if episode else None,
        "step_index": context.step_index,
        "node": context.metadata.get("langgraph_node"),
        "langgraph_step": context.metadata.get("langgraph_step"),
        "started_at": context.started_wall,
        "ended_at": time.time(),
        "time_left_before_s": context.time_left_before_s,
        "time_left_after_s": episode.remaining_s() if episode else None,
        "decision": decision,
        "result": result,
        "error": error,
        "features": features,
        "finish": finish,
    }
    called = list(tool_calls)

    def build() -> StepRecord:
        record = StepRecord.from_step(**fields)
        # the episode attributes the time until the next step to these tools
        return record.model_copy(update={"tool_calls": called}) if called else record

    return build


def to_message(
    parsed: tp.ParsedReply,
    result: StrategyResult,
    chosen: StrategyConfig,
    decision: StepDecision,
    context: StepContext,
    model_name: str,
    error: str | None = None,
) -> AIMessage:
    """The step's reply, with usage and the decision in its response metadata.

    A reply that should have been a call but is not one (cut short, invalid) is an
    `invalid_tool_calls` entry, never content."""
    cost = result.cost
    episode = context.episode
    invalid = (
        [InvalidToolCall(type="invalid_tool_call", name=None, args=parsed.invalid, id=None,
                         error=error or "not a valid call of a bound tool")]
        if parsed.invalid is not None and not parsed.tool_calls and not parsed.content
        else []
    )
    return AIMessage(
        content=parsed.content,
        tool_calls=parsed.tool_calls,
        invalid_tool_calls=invalid,
        usage_metadata=usage_metadata(cost),
        response_metadata={
            "model_name": model_name,
            "model_provider": PROVIDER,
            "finish_reason": "tool_calls" if parsed.tool_calls else result.selected.finish_reason,
            "tidal": {
                "strategy": chosen.name,
                "config": asdict(chosen),
                "reason": decision.reason,
                "predictor_kind": decision.predictor_kind,
                "allowance_s": decision.allowance_s,
                "cut_short": cost.cut_short,
                "wall_s": cost.wall_s,
                "engine_calls": cost.engine_calls,
                "engine_retries": cost.engine_retries,
                "servers": list(cost.servers),
                "episode_id": episode.id if episode else None,
                "step_index": context.step_index,
            },
        },
    )
