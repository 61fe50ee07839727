"""TidalChatModel: a LangChain chat model on the local vLLM engine that decides,
per call, which decoding strategy and how much budget to spend.

Data flows one way: messages -> step features -> allocation decision ->
strategy -> engine -> selection -> AIMessage + trace record.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import math
import queue
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from operator import itemgetter
from typing import Any, Literal

from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.chat_models import LangSmithParams
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    ToolMessage,
)
from langchain_core.messages.ai import UsageMetadata
from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.output_parsers.openai_tools import (
    JsonOutputKeyToolsParser,
    PydanticToolsParser,
)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
from langchain_core.runnables.config import RunnableConfig, ensure_config
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, model_validator

from tidal_agents import tool_protocol as tp
from tidal_agents.allocation import (
    CostModel,
    PriorAccuracyPredictor,
    SklearnAccuracyPredictor,
    StepFeatures,
    default_grid,
)
from tidal_agents.allocation.controller import decide
from tidal_agents.engine import EngineConfig, GuidedDecoding, LocalVLLMEngine, get_engine
from tidal_agents.engine.remote import RemoteVLLMEngine, get_remote_engine
from tidal_agents.episode import Episode, current_episode
from tidal_agents.errors import TidalConfigError, TidalEngineError
from tidal_agents.strategies import run_strategy
from tidal_agents.strategies.base import StepInput
from tidal_agents.trace.records import StepRecord
from tidal_agents.types import AnswerKind, Candidate, CostRecord, StrategyConfig, StrategyResult

PROVIDER = "tidal_agents"
#: emitted to callback handlers (LangSmith, custom) once per step
STEP_EVENT = "tidal_step"


class TidalChatModel(BaseChatModel):
    """A LangChain chat model on an in-process vLLM engine with per-step allocation.

    Every call is one agent step. Unless ``strategy`` fixes one, the step's
    strategy (single / best-of-N / beam) and budget are chosen by maximising
    ``acc - lambda_tokens * tokens - lambda_latency * seconds`` among the
    configurations whose predicted latency fits the time the episode has left.

    Example:
        .. code-block:: python

            model = TidalChatModel()
            with model.episode(deadline_s=30) as ep:
                model.invoke("What is 2 + 3?")
            ep.trace.print()
    """

    model_config = ConfigDict(populate_by_name=True, arbitrary_types_allowed=True)

    model: str | None = Field(default=None, alias="model_name")
    """HF model folder or name vLLM accepts; None = the embedded SmolLM2-135M-Instruct."""
    temperature: float | None = None
    """Temperature of single-sample steps (None = greedy). Sampling strategies
    (best-of-N, beam) use their configuration's temperature: voting over
    identical greedy samples would be pointless."""
    max_tokens: int = Field(default=256, ge=1)
    """Most new tokens per sample."""
    timeout: float | None = Field(default=None, gt=0)
    """Per-call limit in seconds when no episode deadline applies."""
    stop: list[str] | None = Field(default=None, alias="stop_sequences")
    max_retries: int = Field(default=2, ge=0)
    """Engine errors retried per call (never past the step's allowance)."""
    seed: int | None = None
    strategy: StrategyConfig | None = None
    """Fix one strategy for every step (disables allocation)."""
    grid: tuple[StrategyConfig, ...] | None = None
    """Configurations the allocator chooses among (default: allocation.default_grid)."""
    lambda_tokens: float = 1e-4
    lambda_latency: float = 0.05
    engine_config: EngineConfig | None = None
    """Extra vLLM engine arguments; ``model`` above takes precedence."""
    base_url: str | list[str] | None = None
    """``vllm serve`` replica URL(s): generate there instead of in-process
    (requests spread over the replicas, failover on errors)."""
    api_key: SecretStr | None = None
    """API key of the ``vllm serve`` replicas (``--api-key``), if they need one."""
    tokenizer: str | None = None
    """Local tokenizer folder for remote replicas whose model folder is not on
    this machine."""
    trace_path: str | None = None
    """JSONL file that every step record is appended to (also per episode)."""

    _engine: LocalVLLMEngine | RemoteVLLMEngine | None = PrivateAttr(default=None)
    _cost_model: CostModel | None = PrivateAttr(default=None)
    _predictor: Any = PrivateAttr(default=None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @model_validator(mode="after")
    def _validate(self) -> TidalChatModel:
        for name in ("lambda_tokens", "lambda_latency"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise TidalConfigError(f"{name}={value!r}: allowed is a finite number >= 0.")
        if self.temperature is not None and (
            not math.isfinite(self.temperature) or self.temperature < 0
        ):
            raise TidalConfigError(f"temperature={self.temperature!r}: allowed is >= 0.")
        if self.base_url is not None:
            urls = [self.base_url] if isinstance(self.base_url, str) else self.base_url
            if not urls or not all(u.startswith(("http://", "https://")) for u in urls):
                raise TidalConfigError(
                    f"base_url={self.base_url!r}: pass one or more http(s):// URLs of "
                    "`vllm serve` replicas."
                )
        if self.stop is not None:
            _check_stop(self.stop)
        return self

    # ----------------------------------------------------------- LangChain ids
    @property
    def _llm_type(self) -> str:
        return "tidal-vllm"

    @property
    def model_name(self) -> str:
        return self.model or "smollm2-135m-instruct"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model": self.model_name,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "strategy": self.strategy.name if self.strategy else "adaptive",
            "lambda_tokens": self.lambda_tokens,
            "lambda_latency": self.lambda_latency,
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider=PROVIDER,
            ls_model_name=str(kwargs.get("model") or self.model_name),
            ls_model_type="chat",
            ls_temperature=self.temperature if self.temperature is not None else 0.0,
            ls_max_tokens=self.max_tokens,
        )
        if stop or self.stop:
            params["ls_stop"] = stop or self.stop
        return params

    # ------------------------------------------------------------- resources
    @property
    def engine(self) -> LocalVLLMEngine | RemoteVLLMEngine:
        """The shared engine for this model (started on first use): in-process,
        or the ``vllm serve`` replicas at ``base_url``."""
        if self._engine is None:
            with self._lock:
                if self._engine is None and self.base_url is not None:
                    self._engine = get_remote_engine(
                        self.base_url,
                        model=self.model,
                        tokenizer=self.tokenizer,
                        api_key=self.api_key.get_secret_value() if self.api_key else None,
                    )
                elif self._engine is None:
                    base = self.engine_config or EngineConfig()
                    cfg = base.model_copy(update={"model": self.model or base.model})
                    self._engine = get_engine(cfg)
        return self._engine

    @property
    def cost_model(self) -> CostModel:
        if self._cost_model is None:
            self._cost_model = CostModel.for_backend(self.engine.backend_id)
        return self._cost_model

    @property
    def accuracy_predictor(self) -> Any:
        """The trained default for the embedded model if shipped, else the prior."""
        if self._predictor is None:
            embedded = self.model is None and self.base_url is None
            trained = SklearnAccuracyPredictor.load_default() if embedded else None
            self._predictor = trained or PriorAccuracyPredictor()
        return self._predictor

    def _predictor_for(self, features: StepFeatures, grid: Sequence[StrategyConfig]) -> Any:
        """The trained predictor only where it was trained: free-text answers over
        configurations it has seen. Tool and structured steps, and grids with
        unseen configurations (beam), use the documented prior."""
        predictor = self.accuracy_predictor
        known = _trained_configs()
        if getattr(predictor, "kind", "") == "trained" and (
            features.answer_kind != "text" or not {c.name for c in grid} <= known
        ):
            return _PRIOR
        return predictor

    def episode(
        self,
        deadline_s: float,
        lambda_tokens: float | None = None,
        lambda_latency: float | None = None,
        trace_path: str | None = None,
        **kwargs: Any,
    ) -> Episode:
        """A deadline for a whole episode; use as ``with model.episode(30) as ep:``.

        The engine is started first: its one-time start-up is not episode time.
        """
        self.engine.start()
        return Episode(
            deadline_s=deadline_s,
            lambda_tokens=self.lambda_tokens if lambda_tokens is None else lambda_tokens,
            lambda_latency=self.lambda_latency if lambda_latency is None else lambda_latency,
            trace_path=trace_path or self.trace_path,
            grid=self.grid,
            **kwargs,
        )

    # ----------------------------------------------------------------- tools
    def bind_tools(
        self,
        tools: Sequence[Any],
        *,
        tool_choice: str | bool | dict[str, Any] | None = None,
        strict: bool | None = None,
        parallel_tool_calls: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools; calls are decoded under a JSON-schema grammar of these tools.

        tool_choice: "auto" (default: call a tool or answer), "any"/"required"/True
        (must call one), "none", a tool name, or {"type": "function", "function":
        {"name": ...}}. parallel_tool_calls=True also admits several calls at once.
        """
        specs = tp.to_tool_specs(list(tools), strict=strict)
        tp.parse_tool_choice(tool_choice, specs)  # fail now, not at the first call
        return super().bind(
            tools=[convert_to_openai_tool(t, strict=strict) for t in tools],
            tool_choice=tool_choice,
            parallel_tool_calls=bool(parallel_tool_calls),
            strict=strict,
            **kwargs,
        )

    def with_structured_output(
        self,
        schema: dict[str, Any] | type | None = None,
        *,
        method: Literal["function_calling", "json_mode", "json_schema"] = "json_schema",
        include_raw: bool = False,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict[str, Any] | BaseModel]:
        """Structured output, always grammar-constrained by the engine.

        json_schema: the reply is decoded under `schema`. function_calling: the
        schema becomes a tool that must be called. json_mode: any JSON object, or
        `schema` when one is given.
        """
        strict = kwargs.pop("strict", None)  # grammar decoding is always strict
        if kwargs:
            raise TidalConfigError(
                f"Unexpected arguments {sorted(kwargs)}; allowed: method, include_raw, strict."
            )
        is_pydantic = isinstance(schema, type) and is_basemodel_subclass(schema)
        if method == "function_calling":
            if schema is None:
                raise TidalConfigError("method='function_calling' needs a schema.")
            tool_name = convert_to_openai_tool(schema)["function"]["name"]
            llm = self.bind_tools(
                [schema], tool_choice=tool_name, strict=strict,
                ls_structured_output_format={"kwargs": {"method": method}, "schema": schema},
            )
            parser: Runnable = (
                PydanticToolsParser(tools=[schema], first_tool_only=True)  # type: ignore[list-item]
                if is_pydantic
                else JsonOutputKeyToolsParser(key_name=tool_name, first_tool_only=True)
            )
        elif method in ("json_schema", "json_mode"):
            if method == "json_schema" and schema is None:
                raise TidalConfigError("method='json_schema' needs a schema.")
            # json_mode with a schema is decoded under that schema too: a small
            # model cannot be trusted to follow format instructions in the prompt.
            json_schema = convert_to_json_schema(schema) if schema is not None else {
                "type": "object"
            }
            llm = self.bind(
                response_format=json_schema,
                ls_structured_output_format={"kwargs": {"method": method}, "schema": json_schema},
            )
            parser = (
                PydanticOutputParser(pydantic_object=schema)  # type: ignore[arg-type]
                if is_pydantic
                else JsonOutputParser()
            )
        else:
            raise TidalConfigError(
                f"method={method!r}: allowed are 'json_schema', 'function_calling', 'json_mode'."
            )
        if not include_raw:
            return llm | parser
        parser_assign = RunnablePassthrough.assign(
            parsed=itemgetter("raw") | parser, parsing_error=lambda _: None
        )
        parser_none = RunnablePassthrough.assign(parsed=lambda _: None)
        parser_with_fallback = parser_assign.with_fallbacks(
            [parser_none], exception_key="parsing_error"
        )
        return RunnableMap(raw=llm) | parser_with_fallback

    # ------------------------------------------------------------ generation
    # BaseChatModel does not hand `configurable` to _generate, and the context
    # variable ensure_config() reads is only set inside chains and graphs. So a
    # deadline given straight to invoke(..., config={"configurable": ...}) rides
    # along as a call argument.
    def invoke(
        self, input: LanguageModelInput, config: RunnableConfig | None = None,
        *, stop: list[str] | None = None, **kwargs: Any,
    ) -> AIMessage:
        return super().invoke(input, config, stop=stop, **_with_tidal_keys(config, kwargs))

    async def ainvoke(
        self, input: LanguageModelInput, config: RunnableConfig | None = None,
        *, stop: list[str] | None = None, **kwargs: Any,
    ) -> AIMessage:
        return await super().ainvoke(
            input, config, stop=stop, **_with_tidal_keys(config, kwargs)
        )

    def stream(
        self, input: LanguageModelInput, config: RunnableConfig | None = None,
        *, stop: list[str] | None = None, **kwargs: Any,
    ) -> Iterator[AIMessageChunk]:
        config = _with_run_id(config)
        token = _STREAM_RUN.set(config)
        try:
            yield from super().stream(
                input, config, stop=stop, **_with_tidal_keys(config, kwargs)
            )
        finally:
            with contextlib.suppress(ValueError):  # closed from another context
                _STREAM_RUN.reset(token)

    async def astream(
        self, input: LanguageModelInput, config: RunnableConfig | None = None,
        *, stop: list[str] | None = None, **kwargs: Any,
    ) -> AsyncIterator[AIMessageChunk]:
        config = _with_run_id(config)
        token = _STREAM_RUN.set(config)
        try:
            async for chunk in super().astream(
                input, config, stop=stop, **_with_tidal_keys(config, kwargs)
            ):
                yield chunk
        finally:
            with contextlib.suppress(ValueError):  # closed from another context
                _STREAM_RUN.reset(token)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        config = ensure_config()

        async def call() -> ChatResult:
            message = await self._step(messages, stop, kwargs, config, _SyncEmitter(run_manager))
            return ChatResult(generations=[ChatGeneration(message=message)])

        return _run_sync(call)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        message = await self._step(
            messages, stop, kwargs, ensure_config(), _AsyncEmitter(run_manager)
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        emitter = _AsyncEmitter(run_manager) if run_manager else _emitter_for_stream(True)
        async for chunk in self._stream_step(messages, stop, kwargs, ensure_config(), emitter):
            yield chunk

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        config = ensure_config()
        emitter = _SyncEmitter(run_manager) if run_manager else _emitter_for_stream(False)
        yield from _iterate_sync(
            lambda: self._stream_step(messages, stop, kwargs, config, emitter)
        )

    async def _stream_step(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        kwargs: dict[str, Any],
        config: Mapping[str, Any],
        emitter: _Emitter,
    ) -> AsyncGenerator[ChatGenerationChunk, None]:
        loop = asyncio.get_running_loop()
        deltas: asyncio.Queue[str | None] = asyncio.Queue()

        def on_token(index: int, text: str) -> None:  # called on the engine's thread
            loop.call_soon_threadsafe(deltas.put_nowait, text)

        task = asyncio.ensure_future(
            self._step(messages, stop, kwargs, config, emitter, on_token=on_token)
        )
        task.add_done_callback(lambda _: loop.call_soon_threadsafe(deltas.put_nowait, None))
        streamed = ""
        try:
            while True:
                delta = await deltas.get()
                if delta is None:
                    break
                streamed += delta
                chunk = ChatGenerationChunk(message=AIMessageChunk(content=delta))
                await emitter.token(delta, chunk)
                yield chunk
            message = await task
        finally:
            if not task.done():
                task.cancel()
        # The last chunk: what was not streamed (a selected answer, tool calls),
        # plus usage and metadata.
        content = message.content if isinstance(message.content, str) else ""
        rest = content[len(streamed):] if content.startswith(streamed) else content
        last = AIMessageChunk(
            content=rest,
            tool_call_chunks=[
                {"name": c["name"], "args": _json(c["args"]), "id": c["id"], "index": i,
                 "type": "tool_call_chunk"}
                for i, c in enumerate(message.tool_calls)
            ],
            usage_metadata=message.usage_metadata,
            response_metadata=message.response_metadata,
            chunk_position="last",
        )
        if rest:
            await emitter.token(rest, ChatGenerationChunk(message=last))
        yield ChatGenerationChunk(message=last)

    # ------------------------------------------------------------- one step
    async def _step(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        kwargs: dict[str, Any],
        config: Mapping[str, Any],
        emitter: _Emitter,
        on_token: Callable[[int, str], None] | None = None,
    ) -> AIMessage:
        started_wall = time.time()
        # 1. messages -> prompt (all validation before any generation)
        tools_raw = kwargs.get("tools") or []
        specs = tp.to_tool_specs(tools_raw, strict=kwargs.get("strict"))
        choice = tp.parse_tool_choice(kwargs.get("tool_choice"), specs)
        parallel = bool(kwargs.get("parallel_tool_calls"))
        response_format = kwargs.get("response_format")
        given_keys = kwargs.get(_TIDAL_KEYS)
        if given_keys:
            config = {**config, "configurable": {**(config.get("configurable") or {}),
                                                 **given_keys}}
        unknown = set(kwargs) - {
            "tools", "tool_choice", "parallel_tool_calls", "strict", "response_format",
            "ls_structured_output_format", _TIDAL_KEYS,
        }
        if unknown:
            raise TidalConfigError(
                f"Unknown call arguments {sorted(unknown)}; allowed: tools, tool_choice, "
                "parallel_tool_calls, strict, response_format."
            )
        if not messages:
            raise TidalConfigError("messages is empty; pass at least one message.")
        stops = _check_stop(stop if stop is not None else (self.stop or ()))
        chat = tp.to_chat_dicts(messages)
        guided: GuidedDecoding | None = None
        if response_format is not None:
            guided = GuidedDecoding(json_schema=response_format)
            chat = tp.add_system_prompt(chat, tp.schema_system_prompt(response_format))
        elif specs:  # tool_choice "none" included: an answer under the answer grammar
            chat = tp.add_system_prompt(chat, tp.tools_system_prompt(specs, choice, parallel))
            guided = tp.reply_grammar(specs, choice, parallel)
        engine = self.engine
        prompt = engine.apply_chat_template(chat)
        prompt_tokens = engine.count_tokens(prompt)
        room = engine.max_model_len - prompt_tokens
        if room < 1:
            raise TidalConfigError(
                f"The conversation is {prompt_tokens} tokens; the model's context is "
                f"{engine.max_model_len}. Shorten the conversation (trim old messages)."
            )
        max_tokens = min(self.max_tokens, room)
        answer_kind: AnswerKind = (
            "tool_call" if guided is not None and response_format is None else "text"
        )

        # 2. step context -> decision
        episode = current_episode() or _episode_from_config(self, config)
        metadata = config.get("metadata") or {}
        step_index = episode.next_step_index() if episode else 0
        features = StepFeatures.from_text(
            _last_user_text(messages),
            prompt_tokens=prompt_tokens,
            step_index=step_index,
            tools_bound=len(specs),
            tool_choice_required=choice.mode in ("required", "named"),
            previous_tool_errors=sum(
                1 for m in messages if isinstance(m, ToolMessage) and m.status == "error"
            ),
            answer_kind=answer_kind,
            concurrent_sequences=max(int(getattr(engine, "in_flight_sequences", 0)), 0),
        )
        grid = self._grid(max_tokens, guided=guided is not None)
        predictor = self._predictor_for(features, grid)
        if episode is not None:
            time_left_before = episode.remaining_s()
            decision = episode.decide(features, self.cost_model, predictor, grid)
        else:
            time_left_before = None
            allowance = self.timeout if self.timeout is not None else math.inf
            decision = decide(
                features, grid, self.cost_model, predictor,
                self.lambda_tokens, self.lambda_latency, allowance,
                latency_headroom=self.cost_model.latency_headroom(),
            )
        chosen = self._fit_config(decision.config, max_tokens)

        # 3. strategy -> engine -> selection
        allowance_s = decision.allowance_s
        deadline = time.monotonic() + allowance_s if math.isfinite(allowance_s) else None
        step = StepInput(prompt=prompt, guided=guided, stop=stops, answer_kind=answer_kind)
        stream_tokens = on_token if chosen.strategy == "single" and guided is None else None
        error: str | None = None
        try:
            result = await self._run_with_retries(step, chosen, deadline, stream_tokens)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            if episode is not None:
                episode.record(self._record(
                    episode, step_index, metadata, started_wall, time_left_before,
                    decision, None, error, features,
                ))
            raise
        if guided is not None and result.selected.finish_reason != "stop":
            # A grammar reply cut short (max_tokens, deadline) is not valid output:
            # prefer the best complete candidate when the strategy drew several.
            complete = [c for c in result.candidates if c.finish_reason == "stop"]
            if complete:
                best = max(complete, key=_candidate_rank)
                result = replace(
                    result, selected=best, details={**result.details, "complete_preferred": True}
                )
        tool_grammar = guided is not None and response_format is None
        # Calls must name a bound tool with schema-valid arguments, even on a
        # backend that ignored the grammar.
        # tool_choice "none": no tool is callable (a backend ignoring the grammar
        # cannot smuggle a call through)
        callable_specs = [] if choice.mode == "none" else (specs or None)
        parsed = tp.parse_reply(result.selected.text, tool_grammar, tools=callable_specs)
        cost = result.cost
        if choice.mode == "auto" and parsed.tool_calls and _repeats_answered_call(
            parsed.tool_calls, messages
        ):
            # Loop guard: small models re-issue a call whose result is already in
            # the conversation. Ask once more, under an answer-only grammar.
            answer = await self._run_with_retries(
                StepInput(prompt=prompt, guided=tp.answer_grammar(), stop=stops),
                StrategyConfig("single", temperature=0.0, max_tokens=chosen.max_tokens),
                deadline, None,
            )
            parsed = tp.parse_reply(answer.selected.text, True, tools=specs or None)
            cost = _merge_costs(cost, answer.cost)
            result = replace(result, cost=cost, details={**result.details, "loop_guard": True})
        usage = UsageMetadata(
            input_tokens=cost.prompt_tokens,
            output_tokens=cost.generated_tokens,
            total_tokens=cost.prompt_tokens + cost.generated_tokens,
            input_token_details={"cache_read": cost.cached_prompt_tokens},
        )
        self.cost_model.update(chosen, features, cost)
        record = self._record(
            episode, step_index, metadata, started_wall, time_left_before, decision, result,
            error, features, finish="tool_call" if parsed.tool_calls else "answer",
        )
        if episode is not None:
            episode.record(record)
        record_dict = record.model_dump(mode="json")
        await emitter.event(STEP_EVENT, record_dict)
        finish = result.selected.finish_reason
        return AIMessage(
            content=parsed.content,
            tool_calls=parsed.tool_calls,
            usage_metadata=usage,
            response_metadata={
                "model_name": self.model_name,
                "model_provider": PROVIDER,
                "finish_reason": "tool_calls" if parsed.tool_calls else finish,
                "tidal": {
                    "strategy": chosen.name,
                    "config": _config_dict(chosen),
                    "reason": decision.reason,
                    "allowance_s": allowance_s,
                    "cut_short": cost.cut_short,
                    "wall_s": cost.wall_s,
                    "engine_calls": cost.engine_calls,
                    "engine_retries": cost.engine_retries,
                    "servers": list(cost.servers),
                    "episode_id": episode.id if episode else None,
                    "step_index": step_index,
                },
            },
        )

    async def _run_with_retries(
        self,
        step: StepInput,
        config: StrategyConfig,
        deadline: float | None,
        on_token: Callable[[int, str], None] | None,
    ) -> StrategyResult:
        from tenacity import (
            AsyncRetrying,
            retry_if_exception_type,
            stop_after_attempt,
            stop_any,
            wait_exponential,
        )
        from tenacity.stop import stop_base

        class past_deadline(stop_base):  # noqa: N801 - reads like tenacity's own stops
            def __call__(self, retry_state: Any) -> bool:
                return deadline is not None and time.monotonic() >= deadline

        retrying = AsyncRetrying(
            retry=retry_if_exception_type(TidalEngineError),
            stop=stop_any(stop_after_attempt(self.max_retries + 1), past_deadline()),
            wait=wait_exponential(multiplier=0.2, max=2),
            reraise=True,
        )
        errors: list[str] = []
        async for attempt in retrying:
            with attempt:
                try:
                    result = await self._run_guarded(step, config, deadline, on_token)
                except TidalEngineError as exc:
                    errors.append(str(exc))
                    raise
                if errors:  # the trace keeps what was retried and why
                    result = replace(result, details={**result.details, "engine_errors": errors})
                return result
        raise AssertionError("unreachable")  # pragma: no cover

    async def _run_guarded(
        self,
        step: StepInput,
        config: StrategyConfig,
        deadline: float | None,
        on_token: Callable[[int, str], None] | None,
    ) -> StrategyResult:
        """The strategy, with a last-resort limit: engines abort at the allowance
        themselves; one that hangs anyway is cut off a little later."""
        limit = None if deadline is None else max(deadline - time.monotonic(), 0) + _HANG_GRACE_S
        try:
            async with asyncio.timeout(limit):
                return await run_strategy(self.engine, step, config, deadline, on_token)
        except TimeoutError as exc:
            raise TidalEngineError(
                f"The engine did not return within the step's allowance + {_HANG_GRACE_S:g} s; "
                "the request was cancelled."
            ) from exc

    def _grid(self, max_tokens: int, guided: bool) -> tuple[StrategyConfig, ...]:
        if self.strategy is not None:
            return (self.strategy,)
        grid = self.grid or default_grid(max_tokens=max_tokens)
        if guided:
            # A grammar cannot be resumed across beam steps: sampling strategies only.
            grid = tuple(c for c in grid if c.strategy in ("single", "best_of_n"))
        return grid

    def _fit_config(self, config: StrategyConfig, max_tokens: int) -> StrategyConfig:
        """Apply the call's token room and the user's temperature."""
        if self.strategy is not None:
            config = self.strategy
        update: dict[str, Any] = {"max_tokens": min(config.max_tokens, max_tokens)}
        if config.strategy == "single":
            update["temperature"] = self.temperature or 0.0
        return replace(config, **update)

    def _record(
        self,
        episode: Episode | None,
        step_index: int,
        metadata: dict[str, Any],
        started_wall: float,
        time_left_before: float | None,
        decision: Any,
        result: StrategyResult | None,
        error: str | None,
        features: StepFeatures,
        finish: str | None = None,
    ) -> StepRecord:
        return StepRecord.from_step(
            episode_id=episode.id if episode else None,
            step_index=step_index,
            node=metadata.get("langgraph_node"),
            langgraph_step=metadata.get("langgraph_step"),
            started_at=started_wall,
            ended_at=time.time(),
            time_left_before_s=time_left_before,
            time_left_after_s=episode.remaining_s() if episode else None,
            decision=decision,
            result=result,
            error=error,
            features=features,
            finish=finish,
        )


# ------------------------------------------------------------------ helpers
def _json(obj: Any) -> str:
    import json

    return json.dumps(obj, ensure_ascii=False)


def _config_dict(config: StrategyConfig) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(config)


def _candidate_rank(c: Candidate) -> tuple[float, float]:
    return (
        c.score if c.score is not None else -math.inf,
        c.mean_logprob if c.mean_logprob is not None else -math.inf,
    )


def _repeats_answered_call(calls: list[dict[str, Any]], messages: list[BaseMessage]) -> bool:
    """True if every call repeats one whose result is already in the conversation."""
    from tidal_agents.selection.tool_calls import canonical_tool_call

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


def _merge_costs(a: CostRecord, b: CostRecord) -> CostRecord:
    return CostRecord(
        prompt_tokens=a.prompt_tokens + b.prompt_tokens,
        cached_prompt_tokens=a.cached_prompt_tokens + b.cached_prompt_tokens,
        generated_tokens=a.generated_tokens + b.generated_tokens,
        engine_calls=a.engine_calls + b.engine_calls,
        wall_s=a.wall_s + b.wall_s,
        cut_short=a.cut_short or b.cut_short,
        servers=tuple(dict.fromkeys(a.servers + b.servers)),
        engine_retries=a.engine_retries + b.engine_retries,
    )


def _last_user_text(messages: list[BaseMessage]) -> str:
    for m in reversed(messages):
        if isinstance(m, HumanMessage):
            return m.text
    return messages[-1].text if messages else ""


_PRIOR = PriorAccuracyPredictor()


@functools.lru_cache(maxsize=1)
def _trained_configs() -> frozenset[str]:
    """Configuration names the shipped predictor was trained on."""
    import json
    from importlib.resources import files

    try:
        report = files("tidal_agents").joinpath("data/accuracy_predictor.json").read_text()
        return frozenset(json.loads(report).get("configs", []))
    except (OSError, ValueError):
        return frozenset()


#: episodes declared through RunnableConfig, by id; the oldest are dropped
_CONFIG_EPISODES: OrderedDict[str, Episode] = OrderedDict()
_CONFIG_EPISODES_MAX = 256
_CONFIG_EPISODES_LOCK = threading.Lock()


def _check_stop(stop: Any) -> tuple[str, ...]:
    """A stop string or list of them, as a tuple (TidalConfigError otherwise)."""
    items = (stop,) if isinstance(stop, str) else stop
    if not isinstance(items, (list, tuple)) or not all(isinstance(s, str) and s for s in items):
        raise TidalConfigError(
            f"stop={stop!r}: allowed is a string or a list of non-empty strings."
        )
    return tuple(items)


#: how long past its allowance a step may hang before it is cancelled
_HANG_GRACE_S = 2.0
#: the call argument that carries RunnableConfig's tidal_* keys into _generate
_TIDAL_KEYS = "tidal_configurable"
#: the config of a direct stream()/astream() call: LangChain does not pass its run
#: manager to _stream/_astream there, and the step event still has to reach handlers
_STREAM_RUN: contextvars.ContextVar[RunnableConfig | None] = contextvars.ContextVar(
    "tidal_stream_run", default=None
)


def _with_run_id(config: RunnableConfig | None) -> RunnableConfig:
    """A copy of `config` with the model run's id fixed in advance."""
    config = ensure_config(config)
    if config.get("run_id") is None:
        config["run_id"] = uuid.uuid4()
    return config


def _emitter_for_stream(is_async: bool) -> _Emitter:
    """An emitter for the model run of a direct stream() call (see _STREAM_RUN)."""
    config = _STREAM_RUN.get()
    if config is None:
        return _AsyncEmitter(None)
    return _RunEmitter(config, is_async)


def _with_tidal_keys(config: RunnableConfig | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    configurable = (config or {}).get("configurable") or {}
    ours = {k: v for k, v in configurable.items()
            if str(k).startswith("tidal_") or k == "thread_id"}
    if not any(str(k).startswith("tidal_") for k in ours):
        return kwargs
    return {**kwargs, _TIDAL_KEYS: ours}


def _episode_from_config(model: TidalChatModel, config: Mapping[str, Any]) -> Episode | None:
    """An episode declared through RunnableConfig ``configurable``.

    Steps of one episode are tied together by ``tidal_episode_id`` or LangGraph's
    ``thread_id``; without either, the deadline applies to this call alone.
    """
    configurable = config.get("configurable") or {}
    if not any(str(k).startswith("tidal_") for k in configurable):
        return None
    key = configurable.get("tidal_episode_id") or configurable.get("thread_id")
    if key is None:
        return Episode.from_config(configurable, grid=model.grid)
    with _CONFIG_EPISODES_LOCK:
        episode = _CONFIG_EPISODES.get(str(key))
        if episode is None or episode.finished:
            episode = Episode.from_config(configurable, grid=model.grid)
            if episode is not None:
                _CONFIG_EPISODES[str(key)] = episode
                while len(_CONFIG_EPISODES) > _CONFIG_EPISODES_MAX:
                    _CONFIG_EPISODES.popitem(last=False)
        return episode


class _Emitter:
    async def token(self, text: str, chunk: ChatGenerationChunk) -> None: ...
    async def event(self, name: str, data: dict[str, Any]) -> None: ...


class _AsyncEmitter(_Emitter):
    def __init__(self, run_manager: AsyncCallbackManagerForLLMRun | None) -> None:
        self.rm = run_manager

    async def token(self, text: str, chunk: ChatGenerationChunk) -> None:
        if self.rm is not None:
            await self.rm.on_llm_new_token(text, chunk=chunk)

    async def event(self, name: str, data: dict[str, Any]) -> None:
        if self.rm is not None:
            from langchain_core.callbacks import AsyncCallbackManager

            # Attributed to this model run, as adispatch_custom_event would do.
            manager = AsyncCallbackManager(
                handlers=self.rm.handlers, parent_run_id=self.rm.parent_run_id,
                tags=self.rm.tags, metadata=self.rm.metadata,
            )
            await manager.on_custom_event(name, data, run_id=self.rm.run_id)


class _RunEmitter(_Emitter):
    """Custom events for a run known only by its config (tokens go through LangChain)."""

    def __init__(self, config: RunnableConfig, is_async: bool) -> None:
        self.config, self.is_async = config, is_async

    async def token(self, text: str, chunk: ChatGenerationChunk) -> None:
        return None  # LangChain's stream() reports every chunk itself

    async def event(self, name: str, data: dict[str, Any]) -> None:
        from langchain_core.callbacks import AsyncCallbackManager, CallbackManager

        args: dict[str, Any] = {
            "inheritable_callbacks": self.config.get("callbacks"),
            "inheritable_tags": self.config.get("tags"),
            "inheritable_metadata": self.config.get("metadata"),
        }
        run_id = self.config.get("run_id")
        if self.is_async:
            await AsyncCallbackManager.configure(**args).on_custom_event(
                name, data, run_id=run_id
            )
        else:
            CallbackManager.configure(**args).on_custom_event(name, data, run_id=run_id)


class _SyncEmitter(_Emitter):
    def __init__(self, run_manager: CallbackManagerForLLMRun | None) -> None:
        self.rm = run_manager

    async def token(self, text: str, chunk: ChatGenerationChunk) -> None:
        if self.rm is not None:
            self.rm.on_llm_new_token(text, chunk=chunk)

    async def event(self, name: str, data: dict[str, Any]) -> None:
        if self.rm is not None:
            from langchain_core.callbacks import CallbackManager

            manager = CallbackManager(
                handlers=self.rm.handlers, parent_run_id=self.rm.parent_run_id,
                tags=self.rm.tags, metadata=self.rm.metadata,
            )
            manager.on_custom_event(name, data, run_id=self.rm.run_id)


def _run_sync(factory: Callable[[], Any]) -> Any:
    """Run a coroutine to completion from sync code, inside or outside a loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    # Called from sync code running inside a loop (e.g. a notebook): use a thread.
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(factory())
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def _iterate_sync(factory: Callable[[], AsyncGenerator[Any, None]]) -> Iterator[Any]:
    """Iterate an async generator from sync code (on a helper thread's loop)."""
    items: queue.Queue[tuple[str, Any]] = queue.Queue()
    cancel = threading.Event()

    async def pump() -> None:
        agen = factory()
        try:
            async for item in agen:
                items.put(("item", item))
                if cancel.is_set():
                    break
        finally:
            await agen.aclose()

    def target() -> None:
        try:
            asyncio.run(pump())
            items.put(("done", None))
        except BaseException as exc:  # surfaced in the consumer
            items.put(("error", exc))

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    try:
        while True:
            kind, value = items.get()
            if kind == "item":
                yield value
            elif kind == "error":
                raise value
            else:
                return
    finally:
        cancel.set()


__all__ = ["TidalChatModel"]
