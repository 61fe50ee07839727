"""One agent step: prepare -> decide -> execute -> finish.

The pipeline is given its engine, cost model, predictor and settings; it knows
nothing of LangChain's runnables or callbacks (the chat model adapts those).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, SystemMessage

from tidal_agents import tool_protocol as tp
from tidal_agents.allocation import CostModel, StepFeatures
from tidal_agents.allocation.load import EngineLoad, engine_load, ledger_for
from tidal_agents.allocation.predictor import AccuracyPredictor
from tidal_agents.engine.types import Engine, TokenCallback
from tidal_agents.episode import Episode, EpisodeRegistry, current_episode, open_episodes
from tidal_agents.errors import TidalEngineError
from tidal_agents.step.decide import (
    AllocationSettings,
    WrapUp,
    decide_step,
    fit_config,
    rest_of_episode_s,
    step_grid,
    stretch_when_nothing_fits,
    wrap_up,
)
from tidal_agents.step.execute import execute
from tidal_agents.step.finish import (
    StepContext,
    prefer_complete,
    repeats_answered_call,
    step_record,
    step_record_builder,
    to_message,
)
from tidal_agents.step.prepare import (
    CallOptions,
    PreparedStep,
    prepare_step,
    step_features,
)
from tidal_agents.strategies.base import StepInput
from tidal_agents.trace.outcomes import NO_USABLE_REPLY, TRUNCATED
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


class StepOutcome:
    """A step's reply and its trace record. The record is built when first read:
    outside an episode, with no callback handler listening, nothing reads it."""

    def __init__(
        self, message: AIMessage, record: StepRecord | Callable[[], StepRecord]
    ) -> None:
        self.message = message
        self._record = record

    @property
    def record(self) -> StepRecord:
        if not isinstance(self._record, StepRecord):
            self._record = self._record()
        return self._record


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
        if episode is not None and episode.announce_budget:
            note = episode.budget_note()
            episode.record_event("budget_note", note=note)
            messages = [*messages, SystemMessage(note)]
        prepared = prepare_step(self.engine, messages, options, stops, self.settings.max_tokens)
        ledger = ledger_for(self.engine)
        ticket = ledger.enter(prepared.prompt_tokens)
        try:
            return await self._run(prepared, episode, metadata, on_token, started_wall, ticket)
        finally:
            ledger.leave(ticket)

    async def _run(
        self,
        prepared: PreparedStep,
        episode: Episode | None,
        metadata: Mapping[str, Any],
        on_token: TokenCallback | None,
        started_wall: float,
        ticket: int,
    ) -> StepOutcome:
        step_index = episode.next_step_index() if episode else 0
        prepared, features, wrapping_up = self._wrap_up_if_due(
            prepared, step_index, episode, ticket
        )
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
        if episode is not None:
            rest_s = rest_of_episode_s(
                features, calls_tools(prepared), prepared.max_tokens, episode, self.cost_model
            )
            decision = stretch_when_nothing_fits(decision, rest_s, episode)
        if wrapping_up is not None:
            decision = replace(decision, reason=f"{wrapping_up.reason()}; {decision.reason}")
        room = token_room(prepared.max_tokens, decision.tokens_left, decision.config.n)
        chosen = fit_config(allocation, decision.config, room)
        allowance_s = decision.allowance_s
        deadline = time.monotonic() + allowance_s if math.isfinite(allowance_s) else None
        limit = hard_limit(episode)
        stream = on_token if chosen.strategy == "single" and prepared.guided is None else None
        ledger_for(self.engine).leave(ticket)  # from here the engine counts the request
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
        if needs_rescue(parsed, result) and allocation.strategy is None:
            result, parsed = await self._fallback(
                prepared, features, result, parsed, episode, limit, deadline
            )
        if parsed.tool_calls and episode is not None and allocation.strategy is None:
            result, parsed = await self._answer_instead_of_late_call(
                prepared, features, result, parsed, episode, limit
            )
        error = None if has_usable_output(parsed) else no_usable_output_error(result)
        build_record = step_record_builder(
            context, decision, features, result, error, finish=step_finish(parsed, result),
            tool_calls=[c["name"] for c in parsed.tool_calls],
        )
        record: StepRecord | Callable[[], StepRecord] = build_record
        if episode is not None:
            record = build_record()
            episode.record(record)
        message = to_message(
            parsed, result, chosen, decision, context, self.settings.model_name, error
        )
        return StepOutcome(message=message, record=record)

    def _wrap_up_if_due(
        self, prepared: PreparedStep, step_index: int, episode: Episode | None, ticket: int
    ) -> tuple[PreparedStep, StepFeatures, WrapUp | None]:
        """The step as prepared, or re-prepared under the answer-only grammar when the
        episode has no time left for another tool round trip."""
        load = engine_load(self.engine, ledger_for(self.engine), ticket)
        # every other open episode decodes at least one sequence soon, if not yet
        # (an episode declared per call through RunnableConfig keys is not open)
        others = open_episodes(besides=episode)
        load = replace(load, concurrent_sequences=max(load.concurrent_sequences, others))
        features = self._features(prepared, step_index, load)
        options = prepared.options
        due = wrap_up(features, options.choice.mode, prepared.max_tokens, episode,
                      self.cost_model)
        if due is None:
            return prepared, features, None
        prepared = self._answer_only(prepared)
        return prepared, self._features(prepared, step_index, load), due

    @staticmethod
    def _features(prepared: PreparedStep, step_index: int, load: EngineLoad) -> StepFeatures:
        return step_features(
            prepared, step_index, load.concurrent_sequences, load.queued_prompt_tokens
        )

    def _answer_only(self, prepared: PreparedStep) -> PreparedStep:
        """The step re-prepared to answer under the answer-only grammar (no tool call)."""
        answer_only = replace(prepared.options, choice=tp.ToolChoice("none"))
        return prepare_step(
            self.engine, prepared.messages, answer_only, prepared.stops, self.settings.max_tokens
        )

    async def _fallback(
        self,
        prepared: PreparedStep,
        features: StepFeatures,
        result: StrategyResult,
        parsed: tp.ParsedReply,
        episode: Episode | None,
        limit: float | None,
        call_deadline: float | None,
    ) -> tuple[StrategyResult, tp.ParsedReply]:
        """A short greedy decode when the chosen configuration left nothing usable
        (cut short, or a half-written call), if the time left is predicted to fit it
        (without headroom) or is at least `RESCUE_FLOOR_S`.
        In an episode it may take what the episode can spare; when that cannot fit a
        tool round trip after it, it answers under the answer-only grammar instead.
        Outside one it ends by the call's deadline (`call_deadline`, from the per-call
        ``timeout``; None: no limit)."""
        greedy = StrategyConfig("single", temperature=0.0, max_tokens=prepared.max_tokens)
        predicted = self.cost_model.predict(greedy, features).latency_s
        rescue_step, time_left = prepared, None
        if episode is not None:
            rescue_step, time_left = self._rescue_plan(prepared, features, episode, predicted)
        elif call_deadline is not None:
            time_left = call_deadline - time.monotonic()
        # An empty ending is the worst outcome: with a second or more left the rescue
        # is tried even when predicted not to fit (predictions after a burst of
        # cut-short steps are pessimistic); below that only when predicted to fit.
        if time_left is not None and predicted > time_left and time_left < RESCUE_FLOOR_S:
            details = {**result.details, "fallback": "skipped: no time left"}
            return replace(result, details=details), parsed
        deadline = None if time_left is None else time.monotonic() + time_left
        try:
            rescue = await execute(
                self.engine, rescue_step.step_input(), greedy, deadline, None,
                self.settings.max_retries, limit,
            )
        except TidalEngineError as exc:
            details = {**result.details, "fallback": f"failed: {exc}"}
            return replace(result, details=details), parsed
        self.cost_model.update(greedy, features, rescue.cost)
        rescue, rescued = await self._parse(rescue_step, rescue, greedy, deadline, limit)
        if not has_usable_output(rescued) and has_usable_output(parsed):
            details = {**result.details, "fallback": f"{greedy.name}: nothing better"}
            return replace(result, cost=result.cost.merged(rescue.cost), details=details), parsed
        how = greedy.name if rescue_step is prepared else f"{greedy.name}, answer only"
        merged = replace(
            result,
            selected=rescue.selected,
            cost=result.cost.merged(rescue.cost),
            details={**result.details, **rescue.details, "fallback": how},
        )
        return merged, rescued

    async def _answer_instead_of_late_call(
        self,
        prepared: PreparedStep,
        features: StepFeatures,
        result: StrategyResult,
        parsed: tp.ParsedReply,
        episode: Episode,
        limit: float | None,
    ) -> tuple[StrategyResult, tp.ParsedReply]:
        """A tool call that ends with too little time left for a typical tool round
        and the answer after it (the step ran long: a loaded engine, a slow rescue)
        would very likely take the episode past its deadline. With tool choice "auto",
        a greedy decode under the answer-only grammar replaces it when one is predicted
        to fit the time left; else the call stands (the tool may still be quick).
        A typical round, not a slow one: the call is the step's best result, and
        replacing it whenever a slow tool might not fit gives up answers that would
        have been right."""
        if prepared.options.choice.mode != "auto":
            return result, parsed
        time_left = episode.remaining_s() - episode.safety_margin_s
        rest_s = rest_of_episode_s(features, True, prepared.max_tokens, episode,
                                   self.cost_model, slow_tools=False)
        if time_left >= rest_s:
            return result, parsed
        answer_step = self._answer_only(prepared)
        greedy = StrategyConfig("single", temperature=0.0, max_tokens=prepared.max_tokens)
        answer_features = step_features(answer_step, features.step_index,
                                        features.concurrent_sequences,
                                        features.queued_prompt_tokens)
        predicted = self.cost_model.predict(greedy, answer_features).latency_s
        note = (f"{time_left:.2f} s left after the call, {rest_s:.2f} s needed for a tool "
                "round and an answer")
        if predicted * self.cost_model.latency_headroom() > time_left:
            return replace(result, details={**result.details,
                                            "late_call": f"{note}; no time to answer"}), parsed
        try:
            answer = await execute(
                self.engine, answer_step.step_input(), greedy,
                time.monotonic() + time_left, None, self.settings.max_retries, limit,
            )
        except TidalEngineError:
            return result, parsed
        answered = tp.parse_reply(answer.selected.text, True, tools=None)
        if not answered.content.strip() or answer.selected.finish_reason in TRUNCATED:
            return result, parsed
        merged = replace(
            result, selected=answer.selected, cost=result.cost.merged(answer.cost),
            details={**result.details, "late_call": f"{note}; answered instead"},
        )
        return merged, answered

    def _rescue_plan(
        self, prepared: PreparedStep, features: StepFeatures, episode: Episode,
        predicted_s: float,
    ) -> tuple[PreparedStep, float]:
        """How a fallback decode runs, and for how long: as prepared, with the time
        above the margin less the rest of the episode, when a tool call it may make
        still fits a round trip after it; else under the answer-only grammar (even
        where a call was required), with all the time above the margin."""
        usable = episode.remaining_s() - episode.safety_margin_s
        if not calls_tools(prepared):
            return prepared, usable
        rest_s = rest_of_episode_s(
            features, True, prepared.max_tokens, episode, self.cost_model
        )
        with_tools = usable - rest_s
        if with_tools >= predicted_s * self.cost_model.latency_headroom():
            return prepared, with_tools
        # Even where the call was required: a call made now could not finish its round
        # trip by the deadline, and the step is already degraded (cut short), so the
        # episode's deadline wins over the tool choice and the rescue answers.
        return self._answer_only(prepared), usable

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


#: seconds left above which a rescue decode is always tried (see `StepPipeline._fallback`)
RESCUE_FLOOR_S = 1.0


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


def needs_rescue(parsed: tp.ParsedReply, result: StrategyResult) -> bool:
    """Nothing usable came back, or an answer cut off by the step's time (one cut
    by max_tokens is not: a greedy decode would be cut there too)."""
    return not has_usable_output(parsed) or (
        not parsed.tool_calls and result.selected.finish_reason in ("timeout", "abort")
    )


def step_finish(parsed: tp.ParsedReply, result: StrategyResult) -> str:
    """How the step ended, for its record: "tool_call", "answer", or "truncated" (an
    answer cut off by max_tokens or the step's time: not a usable reply)."""
    if parsed.tool_calls:
        return "tool_call"
    return "truncated" if result.selected.finish_reason in TRUNCATED else "answer"


def no_usable_output_error(result: StrategyResult) -> str:
    why = (
        "cut short at its allowance" if result.cost.cut_short
        else f"finished with {result.selected.finish_reason!r}"
    )
    return f"{NO_USABLE_REPLY}: the step was {why} with no complete answer or tool call"


def calls_tools(prepared: PreparedStep) -> bool:
    """The step may answer with a tool call (tools bound, tool choice not "none")."""
    return bool(prepared.options.specs) and prepared.options.choice.mode != "none"


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
