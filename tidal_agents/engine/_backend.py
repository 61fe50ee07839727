"""What the in-process and the remote backend share: collecting one request's
outputs into `Sample`s, and the frame of a backend (its private loop, start and
shutdown, generate, and the methods that work through the model's tokenizer)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import threading
import time
from collections.abc import Coroutine, Iterable, Sequence
from typing import Any, Self, TypeVar

from tidal_agents.engine.loop_thread import LoopThread
from tidal_agents.engine.types import (
    FinishReason,
    GenerationRequest,
    GenerationResult,
    Sample,
    TokenCallback,
    check_prompt_ids,
)
from tidal_agents.errors import TidalEngineError, TidalError

logger = logging.getLogger(__name__)
T = TypeVar("T")
#: counted prompts whose token ids are kept for their request (a few steps' worth)
_ENCODE_CACHE_SIZE = 32


def finish_reason(reason: str | None, timed_out: bool) -> FinishReason:
    """Our finish reason for vLLM's (None: the sample never finished)."""
    if reason is None and timed_out:
        return "timeout"
    if reason == "length":
        return "length"
    if reason in (None, "abort"):
        return "abort"
    return "stop"


class SampleCollector:
    """Collects the pieces of one request's samples as they arrive, per sample index."""

    def __init__(self, n: int, want_logprobs: bool) -> None:
        self.text = [""] * n
        self.tokens: list[list[int]] = [[] for _ in range(n)]
        self.logprobs: list[list[float]] = [[] for _ in range(n)]
        self.top: list[list[dict[int, float]]] = [[] for _ in range(n)]
        self.finish: list[str | None] = [None] * n
        self.want_logprobs = want_logprobs
        #: ``time.perf_counter()`` when the first generated token arrived
        self.first_token_at: float | None = None

    def add(
        self,
        index: int,
        text: str,
        token_ids: Sequence[int],
        finish: str | None,
        *,
        logprobs: Iterable[float] = (),
        top_logprobs: Iterable[dict[int, float]] = (),
        on_token: TokenCallback | None = None,
    ) -> None:
        """One delta of sample `index`: new text and token ids, the sampled tokens'
        log-probs and their top alternatives (kept only when log-probs were asked
        for), and vLLM's finish reason once it has one."""
        if token_ids and self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        self.tokens[index].extend(token_ids)
        if self.want_logprobs:
            self.logprobs[index].extend(logprobs)
            self.top[index].extend(top_logprobs)
        if text:
            self.text[index] += text
            if on_token is not None:
                on_token(index, text)
        if finish is not None:
            self.finish[index] = finish

    def samples(self, timed_out: bool) -> tuple[Sample, ...]:
        return tuple(
            Sample(
                index=i,
                text=text,
                token_ids=tuple(self.tokens[i]),
                finish_reason=finish_reason(self.finish[i], timed_out),
                logprobs=tuple(self.logprobs[i]),
                top_logprobs=tuple(self.top[i]),
            )
            for i, text in enumerate(self.text)
        )

    def result(
        self,
        *,
        started: float,
        timed_out: bool,
        request_id: str,
        prompt_tokens: int,
        cached_prompt_tokens: int,
        extra: dict[str, Any] | None = None,
    ) -> GenerationResult:
        """The request's result; `started` is its ``time.perf_counter()`` at submission."""
        samples = self.samples(timed_out)
        first = self.first_token_at
        return GenerationResult(
            samples=samples,
            prompt_tokens=prompt_tokens,
            cached_prompt_tokens=cached_prompt_tokens,
            generated_tokens=sum(len(s.token_ids) for s in samples),
            wall_s=time.perf_counter() - started,
            timed_out=timed_out,
            request_id=request_id,
            first_token_s=None if first is None else first - started,
            extra={} if extra is None else extra,
        )


class LoopBackend:
    """The frame both backends share: a private event loop (`LoopThread`) that the
    backend's async resource (vLLM's ``AsyncLLM``, an HTTP client) lives on, opened
    once and closed once, and the methods that work through the model's Hugging Face
    tokenizer. A backend supplies the hooks below and ``_generate``."""

    _thread_name = "tidal-engine"
    #: how long `shutdown` waits for the resource to close on its loop
    _close_timeout_s = 10.0

    def __init__(self) -> None:
        self._runner: LoopThread | None = None
        self._tokenizer: Any = None
        self._max_model_len = 0
        self._start_lock = threading.Lock()
        self._encode_cache: dict[str, tuple[int, ...]] = {}
        self._encode_lock = threading.Lock()
        self._closed = False
        self.startup_s: float | None = None
        #: time.monotonic() of the last output for any request (set by the backend)
        self._last_output = -math.inf

    # ------------------------------------------------------------------ hooks
    @property
    def seconds_since_output(self) -> float:
        """Seconds since the engine last produced output for any request (inf before
        the first): a busy engine is producing, a hung one is not."""
        return time.monotonic() - self._last_output

    def _is_open(self) -> bool:
        raise NotImplementedError

    def _prepare(self) -> None:
        """Work on the caller's thread before the loop starts."""

    def _open(self, runner: LoopThread) -> Any:
        """Create the resource on `runner`; returns what `_opened` needs."""
        raise NotImplementedError

    def _start_error(self, exc: Exception) -> str:
        raise NotImplementedError

    def _opened(self, opened: Any) -> None:
        """After a successful `_open`: read the tokenizer and the context size."""

    def _log_started(self) -> None:
        """Log the start (``startup_s`` is set by then)."""

    def _detach(self) -> Any:
        """Take the resource away for closing (None when there is none)."""
        raise NotImplementedError

    async def _close(self, resource: Any) -> None:
        raise NotImplementedError

    async def _generate(
        self, request: GenerationRequest, on_token: TokenCallback | None
    ) -> GenerationResult:
        raise NotImplementedError

    # -------------------------------------------------------------- lifecycle
    def start(self) -> Self:
        """Start the backend (idempotent, thread-safe). Blocks until it serves."""
        with self._start_lock:
            if self._is_open():
                return self
            if self._closed:
                raise TidalEngineError("This engine was shut down; create a new one.")
            t0 = time.perf_counter()
            self._prepare()
            runner = LoopThread(self._thread_name)
            try:
                opened = self._open(runner)
                self._runner = runner
            except Exception as exc:
                self._detach()
                self._runner = None
                runner.stop()
                if isinstance(exc, TidalError):
                    raise
                raise TidalEngineError(self._start_error(exc)) from exc
            self._opened(opened)
            self.startup_s = time.perf_counter() - t0
            self._log_started()
            return self

    def shutdown(self) -> None:
        """Close the resource on its own loop and stop the loop thread. Safe to call twice."""
        with self._start_lock:
            self._closed = True
            resource, runner = self._detach(), self._runner
            self._runner = None
        if resource is not None and runner is not None:
            try:
                runner.submit(self._close(resource)).result(timeout=self._close_timeout_s)
            except Exception:  # shutting down: nothing useful to do with it
                logger.debug("closing %s raised", type(self).__name__, exc_info=True)
        if runner is not None:
            runner.stop()

    # ------------------------------------------------------------- generation
    def _submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        self.start()
        assert self._runner is not None
        return self._runner.submit(coro)

    async def generate(
        self, request: GenerationRequest, on_token: TokenCallback | None = None
    ) -> GenerationResult:
        """Generate for one prompt; safe to await from any event loop or thread."""
        return await asyncio.wrap_future(self._submit(self._generate(request, on_token)))

    def generate_sync(
        self, request: GenerationRequest, on_token: TokenCallback | None = None
    ) -> GenerationResult:
        return self._submit(self._generate(request, on_token)).result()

    # ------------------------------------------------------------- the model
    @property
    def max_model_len(self) -> int:
        self.start()
        return self._max_model_len

    @property
    def tokenizer(self) -> Any:
        self.start()
        return self._tokenizer

    def apply_chat_template(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> str:
        """Format with the model's own chat template (tools passed when given)."""
        kwargs: dict[str, Any] = {"tokenize": False, "add_generation_prompt": True}
        if tools:
            kwargs["tools"] = tools
        return str(self.tokenizer.apply_chat_template(messages, **kwargs))

    def encode(self, text: str) -> list[int]:
        # Chat-formatted prompts already carry their special tokens.
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def count_tokens(self, text: str) -> int:
        """`text`'s length in tokens. The ids are kept for a while: a step counts its
        prompt's tokens and then submits that prompt, which is then not tokenized
        again. Counting always tokenizes, so a repeated prompt costs what a new one does."""
        ids = tuple(self.encode(text))
        with self._encode_lock:
            cache = self._encode_cache
            cache.pop(text, None)  # to the newest end
            cache[text] = ids
            while len(cache) > _ENCODE_CACHE_SIZE:
                del cache[next(iter(cache))]  # the oldest
        return len(ids)

    def _prompt_ids(self, request: GenerationRequest) -> list[int]:
        """The request's prompt as token ids, checked against the context and vocabulary."""
        prompt = request.prompt
        if isinstance(prompt, str):
            counted = self._encode_cache.get(prompt)
            ids = self.encode(prompt) if counted is None else list(counted)
        else:
            ids = list(prompt)
        check_prompt_ids(ids, request.max_tokens, self._max_model_len, len(self._tokenizer))
        return ids
