"""TidalChatModel: a LangChain chat model on vLLM that decides, per call, which
decoding strategy and how much budget to spend.

This module adapts LangChain's entry points to the step pipeline
(`tidal_agents.step`), where every call's work is done.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from operator import itemgetter
from typing import Any, Literal

from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.chat_models import LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
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
from tidal_agents.allocation import CostModel, PriorAccuracyPredictor, SklearnAccuracyPredictor
from tidal_agents.allocation.predictor import AccuracyPredictor
from tidal_agents.engine import EngineConfig, get_engine
from tidal_agents.engine.remote import get_remote_engine
from tidal_agents.engine.types import Engine, TokenCallback
from tidal_agents.episode import Episode, EpisodeRegistry
from tidal_agents.errors import TidalConfigError
from tidal_agents.lc_bridge import (
    STREAM_RUN,
    AsyncEmitter,
    Emitter,
    SyncEmitter,
    emitter_for_stream,
    iterate_sync,
    run_sync,
    stream_step,
    with_run_id,
    with_tidal_keys,
)
from tidal_agents.step import (
    PROVIDER,
    AllocationSettings,
    StepPipeline,
    StepSettings,
    episode_for_call,
    parse_call_options,
)
from tidal_agents.trace.events import STEP_EVENT
from tidal_agents.types import StrategyConfig
from tidal_agents.validation import check_number, check_stop

#: episodes declared through RunnableConfig, by id or thread; the oldest are dropped
_CONFIG_EPISODES = EpisodeRegistry(max_size=256)


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
    lambda_tokens: float = AllocationSettings.lambda_tokens
    """Utility cost of one generated token (default: chosen by `bench allocation`)."""
    lambda_latency: float = AllocationSettings.lambda_latency
    """Utility cost of one second of predicted latency (default: as lambda_tokens)."""
    predictor_file: str | None = None
    """A trained accuracy predictor (`tidal-agents train --model-out FILE`) for this
    model and its tasks; None = the shipped one for the embedded model, else the prior."""
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

    _engine: Engine | None = PrivateAttr(default=None)
    _cost_model: CostModel | None = PrivateAttr(default=None)
    _predictor: AccuracyPredictor | None = PrivateAttr(default=None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @model_validator(mode="after")
    def _validate(self) -> TidalChatModel:
        check_number("lambda_tokens", self.lambda_tokens, lo=0)
        check_number("lambda_latency", self.lambda_latency, lo=0)
        check_number("temperature", self.temperature, lo=0, allow_none=True)
        if self.predictor_file is not None and not os.path.isfile(self.predictor_file):
            raise TidalConfigError(
                f"predictor_file={self.predictor_file!r}: no such file; allowed is a file "
                "written by `tidal-agents train --model-out FILE`, or None."
            )
        if self.base_url is not None:
            urls = [self.base_url] if isinstance(self.base_url, str) else self.base_url
            if not urls or not all(u.startswith(("http://", "https://")) for u in urls):
                raise TidalConfigError(
                    f"base_url={self.base_url!r}: pass one or more http(s):// URLs of "
                    "`vllm serve` replicas."
                )
        if self.stop is not None:
            check_stop(self.stop)
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
    def engine(self) -> Engine:
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
    def accuracy_predictor(self) -> AccuracyPredictor:
        """The trained default for the embedded model if shipped, else the prior."""
        if self._predictor is None:
            embedded = self.model is None and self.base_url is None
            trained: SklearnAccuracyPredictor | None = None
            if self.predictor_file is not None:
                trained = SklearnAccuracyPredictor.load(self.predictor_file)
            elif embedded:
                trained = SklearnAccuracyPredictor.load_default()
            self._predictor = trained or PriorAccuracyPredictor()
        return self._predictor

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
        return super().invoke(input, config, stop=stop, **with_tidal_keys(config, kwargs))

    async def ainvoke(
        self, input: LanguageModelInput, config: RunnableConfig | None = None,
        *, stop: list[str] | None = None, **kwargs: Any,
    ) -> AIMessage:
        return await super().ainvoke(
            input, config, stop=stop, **with_tidal_keys(config, kwargs)
        )

    def stream(
        self, input: LanguageModelInput, config: RunnableConfig | None = None,
        *, stop: list[str] | None = None, **kwargs: Any,
    ) -> Iterator[AIMessageChunk]:
        config = with_run_id(config)
        token = STREAM_RUN.set(config)
        try:
            yield from super().stream(
                input, config, stop=stop, **with_tidal_keys(config, kwargs)
            )
        finally:
            with contextlib.suppress(ValueError):  # closed from another context
                STREAM_RUN.reset(token)

    async def astream(
        self, input: LanguageModelInput, config: RunnableConfig | None = None,
        *, stop: list[str] | None = None, **kwargs: Any,
    ) -> AsyncIterator[AIMessageChunk]:
        config = with_run_id(config)
        token = STREAM_RUN.set(config)
        try:
            async for chunk in super().astream(
                input, config, stop=stop, **with_tidal_keys(config, kwargs)
            ):
                yield chunk
        finally:
            with contextlib.suppress(ValueError):  # closed from another context
                STREAM_RUN.reset(token)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        config = ensure_config()

        async def call() -> ChatResult:
            message = await self._step(messages, stop, kwargs, config, SyncEmitter(run_manager))
            return ChatResult(generations=[ChatGeneration(message=message)])

        return run_sync(call)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        message = await self._step(
            messages, stop, kwargs, ensure_config(), AsyncEmitter(run_manager)
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        emitter = AsyncEmitter(run_manager) if run_manager else emitter_for_stream(True)
        config = ensure_config()
        async for chunk in stream_step(
            lambda on_token: self._step(messages, stop, kwargs, config, emitter, on_token),
            emitter,
        ):
            yield chunk

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        config = ensure_config()
        emitter = SyncEmitter(run_manager) if run_manager else emitter_for_stream(False)
        yield from iterate_sync(lambda: stream_step(
            lambda on_token: self._step(messages, stop, kwargs, config, emitter, on_token),
            emitter,
        ))

    async def _step(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        kwargs: dict[str, Any],
        config: Mapping[str, Any],
        emitter: Emitter,
        on_token: TokenCallback | None = None,
    ) -> AIMessage:
        """One agent step through the pipeline; its record goes to handlers as an event."""
        options = parse_call_options(kwargs)
        configurable = {**(config.get("configurable") or {}), **(options.configurable or {})}
        stops = check_stop(stop if stop is not None else (self.stop or ()))
        episode = episode_for_call(configurable, _CONFIG_EPISODES, self.grid)
        outcome = await self.pipeline.run(
            messages, options, stops, episode, config.get("metadata") or {}, on_token
        )
        if emitter.has_listeners:
            await emitter.event(STEP_EVENT, outcome.record.model_dump(mode="json"))
        return outcome.message

    @property
    def pipeline(self) -> StepPipeline:
        """The step pipeline over this model's engine, cost model, predictor and settings."""
        return StepPipeline(
            engine=self.engine,
            cost_model=self.cost_model,
            predictor=self.accuracy_predictor,
            settings=StepSettings(
                allocation=AllocationSettings(
                    strategy=self.strategy, grid=self.grid,
                    lambda_tokens=self.lambda_tokens, lambda_latency=self.lambda_latency,
                    timeout=self.timeout, temperature=self.temperature,
                ),
                max_tokens=self.max_tokens,
                max_retries=self.max_retries,
                model_name=self.model_name,
            ),
        )


__all__ = ["STEP_EVENT", "TidalChatModel"]
