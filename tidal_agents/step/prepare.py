"""Prepare: messages and call options -> prompt, grammar, stops, answer kind, features.

Every check on the caller's input happens here, before any generation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.messages import BaseMessage, HumanMessage, ToolMessage

from tidal_agents import tool_protocol as tp
from tidal_agents.allocation import StepFeatures
from tidal_agents.allocation.features import StepKind
from tidal_agents.engine.types import Engine, GuidedDecoding
from tidal_agents.errors import TidalConfigError
from tidal_agents.strategies.base import StepInput
from tidal_agents.types import AnswerKind

#: the call argument that carries RunnableConfig's tidal_* keys into a step
TIDAL_KEYS = "tidal_configurable"
#: call arguments a step accepts (bound by bind_tools / with_structured_output)
CALL_ARGUMENTS = ("tools", "tool_choice", "parallel_tool_calls", "strict", "response_format")
#: accepted and ignored: LangChain's tracing metadata, and the RunnableConfig keys above
_PASSED_THROUGH = ("ls_structured_output_format", TIDAL_KEYS)


@dataclass(frozen=True)
class CallOptions:
    """One call's arguments, checked."""

    specs: tuple[tp.ToolSpec, ...] = ()
    choice: tp.ToolChoice = tp.ToolChoice("auto")
    parallel_tool_calls: bool = False
    response_format: dict[str, Any] | None = None
    #: RunnableConfig ``configurable`` keys given as a call argument (tidal_*)
    configurable: Mapping[str, Any] | None = None


def parse_call_options(kwargs: Mapping[str, Any]) -> CallOptions:
    """Check the call's keyword arguments; unknown ones are a TidalConfigError."""
    unknown = set(kwargs) - set(CALL_ARGUMENTS) - set(_PASSED_THROUGH)
    if unknown:
        raise TidalConfigError(
            f"Unknown call arguments {sorted(unknown)}; allowed: {', '.join(CALL_ARGUMENTS)}."
        )
    specs = tp.to_tool_specs(kwargs.get("tools") or [], strict=kwargs.get("strict"))
    return CallOptions(
        specs=tuple(specs),
        choice=tp.parse_tool_choice(kwargs.get("tool_choice"), specs),
        parallel_tool_calls=bool(kwargs.get("parallel_tool_calls")),
        response_format=kwargs.get("response_format"),
        configurable=kwargs.get(TIDAL_KEYS),
    )


@dataclass(frozen=True)
class PreparedStep:
    """A step ready to decide on and run."""

    messages: tuple[BaseMessage, ...]
    options: CallOptions
    prompt: str
    prompt_tokens: int
    #: the call's token room: the model's setting, capped by what the context leaves
    max_tokens: int
    guided: GuidedDecoding | None
    stops: tuple[str, ...]
    answer_kind: AnswerKind

    @property
    def tool_grammar(self) -> bool:
        """Decoded under the tool-call reply grammar (tools bound, no response_format)."""
        return self.guided is not None and self.options.response_format is None

    @property
    def callable_specs(self) -> list[tp.ToolSpec] | None:
        """Tools a reply may call: none under tool_choice "none", so a backend that
        ignored the grammar cannot smuggle a call through."""
        if self.options.choice.mode == "none":
            return []
        return list(self.options.specs) or None

    def step_input(self) -> StepInput:
        return StepInput(
            prompt=self.prompt, guided=self.guided, stop=self.stops,
            answer_kind=self.answer_kind,
        )


def prepare_step(
    engine: Engine,
    messages: Sequence[BaseMessage],
    options: CallOptions,
    stops: tuple[str, ...],
    max_tokens: int,
) -> PreparedStep:
    """Render the conversation with the tools' or schema's system prompt and grammar."""
    if not messages:
        raise TidalConfigError("messages is empty; pass at least one message.")
    chat = tp.to_chat_dicts(list(messages))
    guided: GuidedDecoding | None = None
    if options.response_format is not None:
        guided = GuidedDecoding(json_schema=options.response_format)
        chat = tp.add_system_prompt(chat, tp.schema_system_prompt(options.response_format))
    elif options.specs:  # tool_choice "none" included: an answer under the answer grammar
        specs = list(options.specs)
        chat = tp.add_system_prompt(
            chat, tp.tools_system_prompt(specs, options.choice, options.parallel_tool_calls)
        )
        guided = tp.reply_grammar(specs, options.choice, options.parallel_tool_calls)
    prompt = engine.apply_chat_template(chat)
    prompt_tokens = engine.count_tokens(prompt)
    room = engine.max_model_len - prompt_tokens
    if room < 1:
        raise TidalConfigError(
            f"The conversation is {prompt_tokens} tokens; the model's context is "
            f"{engine.max_model_len}. Shorten the conversation (trim old messages)."
        )
    answer_kind: AnswerKind = (
        "tool_call" if guided is not None and options.response_format is None else "text"
    )
    return PreparedStep(
        messages=tuple(messages), options=options, prompt=prompt, prompt_tokens=prompt_tokens,
        max_tokens=min(max_tokens, room), guided=guided, stops=stops, answer_kind=answer_kind,
    )


def step_features(
    prepared: PreparedStep, step_index: int, concurrent_sequences: int,
    queued_prompt_tokens: int = 0,
) -> StepFeatures:
    """The allocator's view of the step."""
    messages = prepared.messages
    return StepFeatures.from_text(
        last_user_text(messages),
        prompt_tokens=prepared.prompt_tokens,
        step_index=step_index,
        tools_bound=len(prepared.options.specs),
        tool_choice_required=prepared.options.choice.mode in ("required", "named"),
        tool_choice_none=prepared.options.choice.mode == "none" and bool(prepared.options.specs),
        previous_tool_errors=sum(
            1 for m in messages if isinstance(m, ToolMessage) and m.status == "error"
        ),
        answer_kind=step_kind(prepared),
        concurrent_sequences=max(concurrent_sequences, 0),
        queued_prompt_tokens=max(queued_prompt_tokens, 0),
    )


def step_kind(prepared: PreparedStep) -> StepKind:
    """The allocator's kind of step: a tool-grammar step whose last message is a tool
    result is an answer step ("tool_answer"), else the step's answer kind."""
    if prepared.tool_grammar and isinstance(prepared.messages[-1], ToolMessage):
        return "tool_answer"
    return prepared.answer_kind


def last_user_text(messages: Sequence[BaseMessage]) -> str:
    for m in reversed(messages):
        if isinstance(m, HumanMessage):
            return m.text
    return messages[-1].text if messages else ""
