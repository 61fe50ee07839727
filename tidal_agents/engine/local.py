"""The in-process vLLM engine: one ``AsyncLLM`` per process, on its own event loop.

vLLM's ``AsyncLLM`` is bound to the event loop that created it. Callers come
from everywhere (LangChain's sync path runs in worker threads, pytest creates
loops per test, users run ``asyncio.run`` repeatedly), so the engine lives on a
dedicated daemon thread with its own loop and every call is marshalled there.
Cancelling the caller's await cancels the task on the engine loop, which makes
vLLM abort the request (``AsyncLLM.generate`` aborts on ``CancelledError``).
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import threading
import time
import uuid
from dataclasses import replace
from typing import Any

from tidal_agents.engine._backend import LoopBackend, SampleCollector
from tidal_agents.engine.config import EngineConfig, on_cpu
from tidal_agents.engine.loop_thread import LoopThread
from tidal_agents.engine.types import (
    GenerationRequest,
    GenerationResult,
    GuidedDecoding,
    TokenCallback,
)
from tidal_agents.errors import TidalConfigError, TidalEngineError, TidalError
from tidal_agents.models import resolve_model

logger = logging.getLogger(__name__)


class _Accumulator(SampleCollector):
    """Collects the DELTA ``RequestOutput``s of one vLLM request."""

    def __init__(self, n: int, want_logprobs: bool, prompt_tokens: int) -> None:
        super().__init__(n, want_logprobs)
        self.prompt_tokens = prompt_tokens
        self.cached_tokens = 0

    def add_output(self, out: Any, on_token: TokenCallback | None) -> None:
        if out.prompt_token_ids is not None:
            self.prompt_tokens = len(out.prompt_token_ids)
        if out.num_cached_tokens is not None:
            self.cached_tokens = max(self.cached_tokens, int(out.num_cached_tokens))
        for comp in out.outputs:
            new_ids = list(comp.token_ids)
            logprobs, top = _logprobs_of(comp, new_ids) if self.want_logprobs else ([], [])
            self.add(
                comp.index,
                comp.text,
                new_ids,
                comp.finish_reason,
                logprobs=logprobs,
                top_logprobs=top,
                on_token=on_token,
            )


def _logprobs_of(comp: Any, new_ids: list[int]) -> tuple[list[float], list[dict[int, float]]]:
    """Per new token of a ``CompletionOutput``: its log-prob and the top alternatives."""
    logprobs: list[float] = []
    top: list[dict[int, float]] = []
    for tok, pos in zip(new_ids, comp.logprobs or (), strict=False):
        alternatives = {int(t): float(lp.logprob) for t, lp in pos.items()}
        logprobs.append(alternatives.get(tok, float("nan")))
        top.append(alternatives)
    return logprobs, top


class LocalVLLMEngine(LoopBackend):
    """An in-process vLLM ``AsyncLLM`` behind the small `Engine` interface.

    Use :func:`get_engine` to share one per process; construct directly only
    when you need two different engines.
    """

    _thread_name = "tidal-vllm-engine"
    _close_timeout_s = 30.0

    def __init__(self, config: EngineConfig | None = None) -> None:
        super().__init__()
        self.config = config or EngineConfig()
        self._llm: Any = None
        self._model_path = ""
        self._in_flight = 0  # sequences being generated (changed on the engine loop only)
        #: prompt tokens of requests waiting for their first output (engine loop only)
        self._queued_prompt = 0
        self.restarts = 0
        self._generation = 0  # bumped by every restart
        self._restart_lock: asyncio.Lock | None = None  # created on the engine loop
        #: seconds the start-up warm-up took (None until it ran)
        self.warm_up_s: float | None = None

    # ---------------------------------------------------------------- lifecycle
    def _is_open(self) -> bool:
        return self._llm is not None

    def _prepare(self) -> None:
        self._model_path = resolve_model(self.config.model)
        self.config.apply_environment()

    def _open(self, runner: LoopThread) -> None:
        self._llm = runner.submit(self._create()).result()

    def _start_error(self, exc: Exception) -> str:
        return f"vLLM could not start model {self._model_path!r}: {type(exc).__name__}: {exc}"

    def _opened(self, opened: Any) -> None:
        # Registered after vLLM's own exit hooks so that it runs before them
        # (atexit is last-in, first-out): the engine core is still alive.
        atexit.register(shutdown_all)
        self._tokenizer = self._llm.get_tokenizer()
        self._max_model_len = int(self._llm.model_config.max_model_len)

    def _log_started(self) -> None:
        logger.info("vLLM engine started in %.1f s (%s)", self.startup_s, self._model_path)

    def start(self) -> LocalVLLMEngine:
        """Start vLLM (idempotent) and, the first time, warm it up (`EngineConfig.warm_up`)."""
        first = not self._is_open()
        super().start()
        if first and self.config.warm_up:
            t0 = time.perf_counter()
            self._warm_up()
            self.warm_up_s = time.perf_counter() - t0
            logger.info("vLLM engine warmed up in %.1f s", self.warm_up_s)
        return self

    def _warm_up(self) -> None:
        """The one-time costs of a fresh engine, paid before any episode: the first
        greedy request, the sampling and log-prob paths at the batch sizes the
        default grid uses, and the grammar compiler (see docs/design-notes.md)."""
        prompt = self.apply_chat_template([{"role": "user", "content": "Say hi."}])
        schema = {"type": "object", "properties": {"answer": {"type": "string"}},
                  "required": ["answer"]}
        requests = [
            GenerationRequest(prompt=prompt, max_tokens=4, logprobs=0),
            *(GenerationRequest(prompt=prompt, n=n, temperature=0.7, max_tokens=4, logprobs=0)
              for n in (4, 8, 16)),
            GenerationRequest(prompt=prompt, max_tokens=8,
                              guided=GuidedDecoding(json_schema=schema)),
        ]
        for request in requests:
            self.generate_sync(request)

    async def _create(self) -> Any:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        args = AsyncEngineArgs(**self.config.vllm_engine_args(self._model_path))
        return AsyncLLM.from_engine_args(args)

    def _detach(self) -> Any:
        llm, self._llm = self._llm, None
        return llm

    async def _close(self, resource: Any) -> None:
        # On its own loop, so vLLM cancels its output tasks cleanly.
        await _shutdown_on_loop(resource)

    @property
    def in_flight_sequences(self) -> int:
        """Sequences the engine is generating right now (its load, for the cost model)."""
        return self._in_flight

    @property
    def queued_prompt_tokens(self) -> int:
        """Prompt tokens of requests submitted but not yet prefilled (no output yet):
        a new request waits for their prefill before its own."""
        return self._queued_prompt

    @property
    def is_running(self) -> bool:
        return self._llm is not None and not getattr(self._llm, "errored", False)

    # -------------------------------------------------------------- properties
    @property
    def model_name(self) -> str:
        return self.config.model or "smollm2-135m-instruct"

    @property
    def backend_id(self) -> str:
        import platform

        import vllm

        device = "cpu" if on_cpu() else "cuda"
        return f"{self.model_name}|vllm-{vllm.__version__}-local|{device}|{platform.node()}"

    # ------------------------------------------------------------- generation
    def _sampling_params(self, request: GenerationRequest) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        structured = None
        if request.guided is not None:
            g = request.guided
            structured = StructuredOutputsParams(
                json=g.json_schema,
                regex=g.regex,
                choice=list(g.choice) if g.choice is not None else None,
            )
        return SamplingParams(
            n=request.n,
            temperature=request.temperature,
            top_p=request.top_p,
            seed=request.seed,
            max_tokens=request.max_tokens,
            stop=list(request.stop) or None,
            logprobs=request.logprobs,
            structured_outputs=structured,
            ignore_eos=request.ignore_eos,
            output_kind=RequestOutputKind.DELTA,
        )

    async def _generate(
        self, request: GenerationRequest, on_token: TokenCallback | None
    ) -> GenerationResult:
        if self._restart_lock is not None and self._restart_lock.locked():
            async with self._restart_lock:  # a restart is under way: wait for it
                pass
        generation = self._generation
        t0 = time.monotonic()
        try:
            return await self._generate_once(request, on_token)
        except _EngineDied as died:
            await self._restart_shielded(generation, died)
        # One more try on the restarted engine, in the time the request has left.
        left = None if request.timeout_s is None else request.timeout_s - (time.monotonic() - t0)
        if left is not None and left <= 0:
            raise TidalEngineError(
                "The vLLM engine process died during the request and was restarted, but "
                "the request's time ran out before it could be tried again."
            )
        retry = replace(request, timeout_s=left) if left is not None else request
        try:
            return await self._generate_once(retry, on_token)
        except _EngineDied as died:
            # raises once restarts are spent
            await self._restart_shielded(self._generation, died)
            raise TidalEngineError(
                "The vLLM engine process died again right after a restart."
            ) from died

    async def _restart_shielded(self, generation: int, died: _EngineDied) -> None:
        """`_restart`, shielded: a caller that gives up (its step ran out of time)
        must not leave the engine half-restarted (none at all) for later requests."""
        restart = asyncio.ensure_future(self._restart(generation, died))
        restart.add_done_callback(_retrieve)
        await asyncio.shield(restart)

    async def _restart(self, generation: int, died: _EngineDied) -> None:
        """Start a new AsyncLLM in place of a dead one (once per death, for all waiters)."""
        if self._restart_lock is None:
            self._restart_lock = asyncio.Lock()
        async with self._restart_lock:
            if self._generation != generation:
                return  # another request already restarted it
            if self.restarts >= self.config.max_restarts:
                raise TidalEngineError(
                    f"The vLLM engine process died ({died}) and the restart budget "
                    f"(max_restarts={self.config.max_restarts}) is spent; create a new "
                    "engine or raise EngineConfig.max_restarts."
                ) from died
            logger.warning("vLLM engine died (%s); restarting in %.1f s", died,
                           self.config.restart_backoff_s)
            old, self._llm = self._llm, None
            if old is not None:
                try:
                    old.shutdown()
                except Exception:  # it is dead already
                    logger.debug("shutting down the dead engine raised", exc_info=True)
            await asyncio.sleep(self.config.restart_backoff_s)
            try:
                self._llm = await self._create()
            except Exception as exc:
                raise TidalEngineError(
                    f"The vLLM engine process died and could not be restarted: {exc}"
                ) from exc
            self.restarts += 1
            self._generation += 1

    async def _generate_once(
        self, request: GenerationRequest, on_token: TokenCallback | None
    ) -> GenerationResult:
        llm = self._llm
        if llm is None:
            raise TidalEngineError("The engine is not running (it was shut down).")
        if getattr(llm, "errored", False):
            raise _EngineDied("the engine core is not running")
        ids = self._prompt_ids(request)
        params = self._sampling_params(request)
        request_id = f"tidal-{uuid.uuid4().hex[:16]}"
        acc = _Accumulator(request.n, request.logprobs is not None, len(ids))
        timed_out = False
        t0 = time.perf_counter()
        self._in_flight += request.n
        queued = len(ids)
        self._queued_prompt += queued
        try:
            async with asyncio.timeout(request.timeout_s):
                async for out in llm.generate(
                    {"prompt_token_ids": ids}, params, request_id, priority=request.priority
                ):
                    self._queued_prompt -= queued
                    queued = 0
                    self._last_output = time.monotonic()
                    acc.add_output(out, on_token)
        except TimeoutError:
            timed_out = True  # vLLM aborted the request when the stream was cancelled
        except (TidalError, asyncio.CancelledError):
            raise
        except Exception as exc:
            if _is_engine_death(exc, llm):
                raise _EngineDied(f"{type(exc).__name__}: {exc}") from exc
            raise _engine_error(exc, request_id) from exc
        finally:
            self._in_flight -= request.n
            self._queued_prompt -= queued
        return acc.result(
            started=t0,
            timed_out=timed_out,
            request_id=request_id,
            prompt_tokens=acc.prompt_tokens,
            cached_prompt_tokens=acc.cached_tokens,
        )


def _retrieve(task: asyncio.Future[None]) -> None:
    """Mark a shielded restart's outcome as seen (its waiter may have gone)."""
    if not task.cancelled():
        task.exception()


class _EngineDied(Exception):
    """The engine core process is gone (internal: triggers a restart)."""


def _is_engine_death(exc: BaseException, llm: Any) -> bool:
    from vllm.v1.engine.exceptions import EngineDeadError

    return isinstance(exc, EngineDeadError) or bool(getattr(llm, "errored", False))


async def _shutdown_on_loop(llm: Any) -> None:
    llm.shutdown()
    current = asyncio.current_task()
    pending = [t for t in asyncio.all_tasks() if t is not current]
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


def _engine_error(exc: Exception, request_id: str) -> TidalError:
    """Translate vLLM's exceptions: its input validation becomes a config error."""
    name = type(exc).__name__
    cause = exc.__cause__ or exc
    msg = f"{name}: {exc}" if str(exc) else f"{name}: {type(cause).__name__}: {cause}"
    if isinstance(exc, ValueError) or "ValidationError" in name or "BadRequest" in name:
        return TidalConfigError(f"vLLM rejected request {request_id}: {msg}")
    return TidalEngineError(f"vLLM failed on request {request_id}: {msg}")


# ------------------------------------------------------------- shared engines
_ENGINES: dict[str, LocalVLLMEngine] = {}
_ENGINES_LOCK = threading.Lock()


def get_engine(config: EngineConfig | None = None, start: bool = True) -> LocalVLLMEngine:
    """The process-wide engine for `config` (created once, started lazily)."""
    config = config or EngineConfig()
    with _ENGINES_LOCK:
        key = config.model_dump_json()
        engine = _ENGINES.get(key)
        if engine is None or engine._closed:
            engine = LocalVLLMEngine(config)
            _ENGINES[key] = engine
    return engine.start() if start else engine


def shutdown_all() -> None:
    """Shut down every shared engine (registered at exit)."""
    # At interpreter exit the streams vLLM logs to may already be closed.
    logging.getLogger("vllm").setLevel(logging.CRITICAL)
    with _ENGINES_LOCK:
        engines = list(_ENGINES.values())
        _ENGINES.clear()
    for engine in engines:
        engine.shutdown()
