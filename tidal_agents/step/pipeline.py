"""One agent step: prepare -> decide -> execute -> finish.

The pipeline is given its engine, cost model, predictor and settings; it knows
nothing of LangChain's runnables or callbacks (the chat model adapts those).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage

from tidal_agents import tool_protocol as tp
from tidal_agents.allocation import CostModel, StepFeatures
from tidal_agents.allocation.predictor import AccuracyPredictor
from tidal_agents.engine.types import Engine, TokenCallback
from tidal_agents.episode import Episode, EpisodeRegistry, current_episode
from tidal_agents.errors import TidalEngineError
from tidal_agents.step.decide import (
    AllocationSettings,
    WrapUp,
    decide_step,
    fit_config,
    step_grid,
    wrap_up,
)
from tidal_agents.step.execute import execute
from tidal_agents.step.finish import (
    StepContext,
    prefer_complete,
    repeats_answered_call,
    step_record,
    to_message,
)
from tidal_agents.step.prepare import (
    CallOptions,
    PreparedStep,
    prepare_step,
    step_features,
)
from tidal_agents.strategies.base import StepInput
from tidal_agents.trace.outcomes import NO_USABLE_REPLY
from tidal_agents.trace.records import StepRecord
from tidal_agents.types import StrategyConfig, StrategyResult


@dataclass(frozen=True)
class StepSettings:
    """Everything about a step the chat model's fields decide."""

    allocation: AllocationSettings
    #: most new tokens per sample
    max_tokens: int
    #: engine errors retried per step (never past the step's allowance)
    max_retries: int
    #: the reply's ``model_name``
    model_name: str


@dataclass(frozen=True)
class StepOutcome:
    message: AIMessage
    record: StepRecord


@dataclass
class StepPipeline:
    engine: Engine
    cost_model: CostModel
    predictor: AccuracyPredictor
    settings: StepSettings

    async def run(
        self,
        messages: Sequence[BaseMessage],
        options: CallOptions,
        stops: tuple[str, ...],
        episode: Episode | None,
        metadata: Mapping[str, Any],
        on_token: TokenCallback | None = None,
    ) -> StepOutcome:
        """Run one step; its record goes to the episode's trace, raised errors included."""
        started_wall = time.time()
        prepared = prepare_step(self.engine, messages, options, stops, self.settings.max_tokens)
        step_index = episode.next_step_index() if episode else 0
        prepared, features, wrapping_up = self._wrap_up_if_due(prepared, step_index, episode)
        context = StepContext(
            episode=episode, step_index=step_index, metadata=metadata,
            started_wall=started_wall,
            time_left_before_s=episode.remaining_s() if episode else None,
        )
        allocation = self.settings.allocation
        grid = step_grid(allocation, prepared.max_tokens, guided=prepared.guided is not None)
        decision = decide_step(
            allocation, features, grid, episode, self.cost_model, self.predictor
        )
        if wrapping_up is not None:
            decision = replace(decision, reason=f"{wrapping_up.reason()}; {decision.reason}")
        room = token_room(prepared.max_tokens, decision.tokens_left, decision.config.n)
        chosen = fit_config(allocation, decision.config, room)
        allowance_s = decision.allowance_s
        deadline = time.monotonic() + allowance_s if math.isfinite(allowance_s) else None
        limit = hard_limit(episode)
        stream = on_token if chosen.strategy == "single" and prepared.guided is None else None
        try:
            result = await execute(
                self.engine, prepared.step_input(), chosen, deadline, stream,
                self.settings.max_retries, limit,
            )
        except Exception as exc:
            if episode is not None:
                episode.record(step_record(
                    context, decision, features, None, f"{type(exc).__name__}: {exc}"
                ))
            raise
        if prepared.guided is not None:
            result = prefer_complete(result)
        if wrapping_up is not None:
            result = replace(result, details={**result.details, "wrap_up": asdict(wrapping_up)})
        result, parsed = await self._parse(prepared, result, chosen, deadline, limit)
        self.cost_model.update(chosen, features, result.cost)
        if not has_usable_output(parsed) and allocation.strategy is None:
            result, parsed = await self._fallback(
                prepared, features, result, parsed, episode, limit
            )
        error = None if has_usable_output(parsed) else no_usable_output_error(result)
        record = step_record(
            context, decision, features, result, error,
            finish="tool_call" if parsed.tool_calls else "answer",
            tool_calls=[c["name"] for c in parsed.tool_calls],
        )
        if episode is not None:
            episode.record(record)
        message = to_message(
            parsed, result, chosen, decision, context, self.settings.model_name, error
        )
        return StepOutcome(message=message, record=record)

    def _wrap_up_if_due(
        self, prepared: PreparedStep, step_index: int, episode: Episode | None
    ) -> tuple[PreparedStep, StepFeatures, WrapUp | None]:
        """The step as prepared, or re-prepared under the answer-only grammar when the
        episode has no time left for another tool round trip."""
        load = self.engine.in_flight_sequences
        features = step_features(prepared, step_index, load)
        options = prepared.options
        due = wrap_up(features, options.choice.mode, prepared.max_tokens, episode,
                      self.cost_model)
        if due is None:
            return prepared, features, None
        answer_only = replace(options, choice=tp.ToolChoice("none"))
        prepared = prepare_step(
            self.engine, prepared.messages, answer_only, prepared.stops, self.settings.max_tokens
        )
        return prepared, step_features(prepared, step_index, load), due

    async def _fallback(
        self,
        prepared: PreparedStep,
        features: StepFeatures,
        result: StrategyResult,
        parsed: tp.ParsedReply,
        episode: Episode | None,
        limit: float | None,
    ) -> tuple[StrategyResult, tp.ParsedReply]:
        """A short greedy decode when the chosen configuration left nothing usable
        (cut short, or a half-written call), if the time left is predicted to fit it."""
        greedy = StrategyConfig("single", temperature=0.0, max_tokens=prepared.max_tokens)
        time_left = fallback_time_left(episode, features)
        predicted = self.cost_model.predict(greedy, features).latency_s
        if time_left is not None and predicted * self.cost_model.latency_headroom() > time_left:
            details = {**result.details, "fallback": "skipped: no time left"}
            return replace(result, details=details), parsed
        deadline = None if time_left is None else time.monotonic() + time_left
        try:
            rescue = await execute(
                self.engine, prepared.step_input(), greedy, deadline, None,
                self.settings.max_retries, limit,
            )
        except TidalEngineError as exc:
            details = {**result.details, "fallback": f"failed: {exc}"}
            return replace(result, details=details), parsed
        self.cost_model.update(greedy, features, rescue.cost)
        rescue, rescued = await self._parse(prepared, rescue, greedy, deadline, limit)
        merged = replace(
            result,
            selected=rescue.selected,
            cost=result.cost.merged(rescue.cost),
            details={**result.details, **rescue.details, "fallback": greedy.name},
        )
        return merged, rescued

    async def _parse(
        self,
        prepared: PreparedStep,
        result: StrategyResult,
        chosen: StrategyConfig,
        deadline: float | None,
        limit: float | None,
    ) -> tuple[StrategyResult, tp.ParsedReply]:
        """The reply's content and calls (checked against the bound tools, even on a
        backend that ignored the grammar), with the loop guard applied."""
        parsed = tp.parse_reply(
            result.selected.text, prepared.tool_grammar, tools=prepared.callable_specs
        )
        if not (
            prepared.options.choice.mode == "auto" and parsed.tool_calls
            and repeats_answered_call(parsed.tool_calls, prepared.messages)
        ):
            return result, parsed
        # Loop guard: small models re-issue a call whose result is already in the
        # conversation. Ask once more, under an answer-only grammar.
        answer = await execute(
            self.engine,
            StepInput(prompt=prepared.prompt, guided=tp.answer_grammar(), stop=prepared.stops),
            StrategyConfig("single", temperature=0.0, max_tokens=chosen.max_tokens),
            deadline, None, self.settings.max_retries, limit,
        )
        parsed = tp.parse_reply(
            answer.selected.text, True, tools=list(prepared.options.specs) or None
        )
        merged = result.cost.merged(answer.cost)
        result = replace(result, cost=merged, details={**result.details, "loop_guard": True})
        return result, parsed


def episode_for_call(
    configurable: Mapping[str, Any],
    registry: EpisodeRegistry,
    grid: tuple[StrategyConfig, ...] | None,
) -> Episode | None:
    """The active episode, else one declared through RunnableConfig ``configurable``.

    Steps of a declared episode are tied together by ``tidal_episode_id`` or
    LangGraph's ``thread_id``; without either, its deadline applies to this call alone.
    """
    active = current_episode()
    if active is not None:
        return active
    if not any(str(k).startswith("tidal_") for k in configurable):
        return None
    key = configurable.get("tidal_episode_id") or configurable.get("thread_id")
    if key is None:
        return Episode.from_config(dict(configurable), grid=grid)
    return registry.get_or_create(
        str(key), lambda: Episode.from_config(dict(configurable), grid=grid)
    )


def has_usable_output(parsed: tp.ParsedReply) -> bool:
    """A tool call, or non-empty content (parsing never leaves a protocol fragment
    in the content)."""
    return bool(parsed.tool_calls) or bool(parsed.content.strip())


def no_usable_output_error(result: StrategyResult) -> str:
    why = (
        "cut short at its allowance" if result.cost.cut_short
        else f"finished with {result.selected.finish_reason!r}"
    )
    return f"{NO_USABLE_REPLY}: the step was {why} with no complete answer or tool call"


def fallback_time_left(episode: Episode | None, features: StepFeatures) -> float | None:
    """Seconds a fallback decode may take: the step's fair share of what the episode
    has left now, the later steps and their tool rounds reserved (None: no episode,
    no limit). Taking all of it would leave no time for the tool the rescue calls."""
    if episode is None:
        return None
    return episode.allowance_s(features.step_index, tools_bound=features.tools_bound > 0)


def hard_limit(episode: Episode | None) -> float | None:
    """When a step is cancelled, hung engine or not: the episode's deadline plus half
    its bound B, the other half left for the cancellation to return (None outside
    an episode)."""
    if episode is None:
        return None
    # through remaining_s: the episode's clock need not be time.monotonic
    return time.monotonic() + episode.remaining_s() + episode.overrun_bound_s / 2


def token_room(max_tokens: int, tokens_left: float | None, samples: int) -> int:
    """Tokens per sample: the call's room, capped so that the samples together stay
    within the episode's token budget (at least 1)."""
    if tokens_left is None:
        return max_tokens
    return max(1, min(max_tokens, int(tokens_left // max(samples, 1))))
