"""Test doubles shared by the tests: one engine without vLLM, one clock, one tool.

`FakeEngine` implements the `Engine` protocol of `tidal_agents.engine.types` with
scripted replies, injected failures, hangs and slow replies, so a step can be
tested without a model. `FakeClock` is a manual clock for episodes. `ADD_TOOL`
is an OpenAI-format tool definition.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
import zlib
from collections.abc import Callable, Sequence
from typing import Any

from tidal_agents.engine.types import (
    FinishReason,
    GenerationRequest,
    GenerationResult,
    Sample,
    TokenCallback,
)
from tidal_agents.errors import TidalEngineError

#: the fake tokenizer's vocabulary: piece ids are CRC-32 hashes below this
FAKE_VOCAB_SIZE = 2**31
FAKE_EOS_ID = 0
#: the log-prob every generated token gets when log-probs are requested
FAKE_LOGPROB = -0.1
#: an OpenAI-format tool definition (what `bind_tools` and the server accept)
ADD_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two integers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}
# A piece is a word with the whitespace before it, or trailing whitespace on its
# own, so joining a text's pieces gives the text back exactly.
_PIECE = re.compile(r"\s*\S+|\s+")


class FakeClock:
    """A clock that only moves when told: call it for the time, `advance` to move it."""

    def __init__(self, start: float = 1000.0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class FakeTokenizer:
    """Whitespace pieces with deterministic ids; enough of a Hugging Face
    tokenizer (`encode`, `decode`, `apply_chat_template`, `len`) for the strategies."""

    eos_token_id = FAKE_EOS_ID
    all_special_ids = (FAKE_EOS_ID,)

    def __init__(self) -> None:
        self._pieces: dict[int, str] = {}

    def __len__(self) -> int:
        return FAKE_VOCAB_SIZE

    def pieces(self, text: str) -> list[str]:
        return _PIECE.findall(text)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        ids = []
        for piece in self.pieces(text):
            token_id = 1 + zlib.crc32(piece.encode("utf-8")) % (FAKE_VOCAB_SIZE - 1)
            self._pieces[token_id] = piece
            ids.append(token_id)
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return "".join(self._pieces.get(i, "") for i in ids)

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        tokenize: bool = False,
        add_generation_prompt: bool = True,
    ) -> str:
        lines = [f"tools: {[t.get('function', t).get('name') for t in tools]}"] if tools else []
        lines += [f"{m['role']}: {m['content']}" for m in messages]
        if add_generation_prompt:
            lines.append("assistant:")
        return "\n".join(lines)


class FakeEngine:
    """An `Engine` without vLLM: scripted replies, failures, hangs and slow replies.

    Args:
        replies: texts handed out one per sample, in order, cycling across calls;
            or a function of the request returning the texts for that request
            (cycled over its samples).
        fail_times: the first `fail_times` generate calls raise TidalEngineError.
        hang: every generate call waits until cancelled, ignoring its timeout (a
            stalled backend, for the hang guard).
        delay_s: each call sleeps this long before replying; a request whose
            `timeout_s` is shorter returns at `timeout_s`, timed out, with the part
            of each reply "generated" by then.
        max_model_len: the context the fake model claims.

    Every request, failed or not, is appended to `requests`.
    """

    def __init__(
        self,
        *,
        replies: Sequence[str] | Callable[[GenerationRequest], Sequence[str]] = ("42",),
        fail_times: int = 0,
        hang: bool = False,
        delay_s: float = 0.0,
        max_model_len: int = 2048,
    ) -> None:
        if not callable(replies) and (isinstance(replies, str) or not replies):
            raise ValueError("replies: pass a non-empty sequence of strings or a function")
        self.replies = replies
        self.fail_times = fail_times
        self.hang = hang
        self.delay_s = delay_s
        self.requests: list[GenerationRequest] = []
        self.started = False
        self.model_name = "fake-model"
        self.max_model_len = max_model_len
        self.backend_id = "fake|test"
        self.tokenizer = FakeTokenizer()
        #: samples of the generate calls in progress (the engine's load)
        self.in_flight_sequences = 0
        #: prompt tokens waiting for prefill (the fake prefills instantly)
        self.queued_prompt_tokens = 0
        self._last_output = -math.inf
        self._next_reply = 0

    # ------------------------------------------------------------ protocol
    @property
    def seconds_since_output(self) -> float:
        return time.monotonic() - self._last_output

    def start(self) -> FakeEngine:
        self.started = True
        return self

    def apply_chat_template(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> str:
        return self.tokenizer.apply_chat_template(messages, tools)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.pieces(text))

    async def generate(
        self, request: GenerationRequest, on_token: TokenCallback | None = None
    ) -> GenerationResult:
        self.requests.append(request)
        call = len(self.requests)
        if call <= self.fail_times:
            raise TidalEngineError(f"injected fault: fake engine call {call} failed")
        started = time.perf_counter()
        self.in_flight_sequences += request.n
        try:
            if self.hang:
                await asyncio.Event().wait()  # until cancelled, timeout or not
            timed_out = request.timeout_s is not None and request.timeout_s < self.delay_s
            waited = request.timeout_s if timed_out and request.timeout_s else self.delay_s
            if waited > 0:
                await asyncio.sleep(waited)
        finally:
            self.in_flight_sequences -= request.n
        self._last_output = time.monotonic()
        samples = tuple(
            self._sample(i, text, request, waited / self.delay_s if timed_out else 1.0)
            for i, text in enumerate(self._texts_for(request))
        )
        if on_token is not None:
            for s in samples:
                if s.text:
                    on_token(s.index, s.text)
        prompt_tokens = (
            len(request.prompt) if isinstance(request.prompt, tuple)
            else self.count_tokens(request.prompt)
        )
        wall_s = time.perf_counter() - started
        return GenerationResult(
            samples=samples,
            prompt_tokens=prompt_tokens,
            cached_prompt_tokens=0,
            generated_tokens=sum(len(s.token_ids) for s in samples),
            wall_s=wall_s,
            timed_out=timed_out,
            request_id=f"fake-{call}",
            first_token_s=wall_s,
        )

    # ------------------------------------------------------------- helpers
    def _texts_for(self, request: GenerationRequest) -> list[str]:
        if callable(self.replies):
            texts = list(self.replies(request))
            if not texts:
                raise ValueError("replies function returned no texts")
            return [texts[i % len(texts)] for i in range(request.n)]
        texts = [
            self.replies[(self._next_reply + i) % len(self.replies)] for i in range(request.n)
        ]
        self._next_reply += request.n
        return texts

    def _sample(
        self, index: int, text: str, request: GenerationRequest, done_fraction: float
    ) -> Sample:
        reason: FinishReason = "stop"
        for stop in request.stop:
            if stop in text:
                text = text[: text.index(stop)]
        pieces = self.tokenizer.pieces(text)
        if len(pieces) > request.max_tokens:
            pieces, reason = pieces[: request.max_tokens], "length"
        if done_fraction < 1.0:
            pieces, reason = pieces[: int(len(pieces) * done_fraction)], "timeout"
        text = "".join(pieces)
        ids = tuple(self.tokenizer.encode(text))
        logprobs: tuple[float, ...] = ()
        top: tuple[dict[int, float], ...] = ()
        if request.logprobs is not None:
            logprobs = (FAKE_LOGPROB,) * len(ids)
            top = tuple({i: FAKE_LOGPROB} for i in ids)
        return Sample(index=index, text=text, token_ids=ids, finish_reason=reason,
                      logprobs=logprobs, top_logprobs=top)
