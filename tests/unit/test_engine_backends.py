"""The backends' shared frame without vLLM: output collection, the in-process engine
over a fake ``AsyncLLM``, the remote engine over a mock HTTP fleet, and the lifecycle."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator, Callable, Iterator
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from tests.fakes import FakeTokenizer
from tidal_agents.engine import remote as remote_module
from tidal_agents.engine._backend import LoopBackend, SampleCollector, finish_reason
from tidal_agents.engine.local import LocalVLLMEngine, _Accumulator
from tidal_agents.engine.loop_thread import LoopThread
from tidal_agents.engine.remote import RemoteVLLMEngine, _Stream
from tidal_agents.engine.types import GenerationRequest
from tidal_agents.errors import TidalConfigError, TidalEngineError

# ------------------------------------------------------------------ collector


@pytest.mark.parametrize(
    "reason, timed_out, expected",
    [
        (None, True, "timeout"),
        (None, False, "abort"),
        ("abort", True, "abort"),
        ("length", True, "length"),
        ("length", False, "length"),
        ("stop", False, "stop"),
        ("stop", True, "stop"),
    ],
)
def test_finish_reason(reason: str | None, timed_out: bool, expected: str) -> None:
    assert finish_reason(reason, timed_out) == expected


def test_collector_builds_samples_and_result() -> None:
    seen: list[tuple[int, str]] = []
    col = SampleCollector(2, want_logprobs=True)
    col.add(0, "", [], None, on_token=lambda i, t: seen.append((i, t)))
    assert col.first_token_at is None
    col.add(1, "Hi", [4, 5], None, logprobs=[-0.5, -0.25],
            top_logprobs=[{4: -0.5}, {5: -0.25}], on_token=lambda i, t: seen.append((i, t)))
    assert col.first_token_at is not None
    col.add(1, "!", [6], "stop", logprobs=[-1.0], top_logprobs=[{6: -1.0}])
    col.add(0, "Yo", [7], "length")
    result = col.result(started=col.first_token_at - 0.5, timed_out=False, request_id="r",
                        prompt_tokens=9, cached_prompt_tokens=3, extra={"k": 1})
    first, second = result.samples
    assert (first.index, first.text, first.token_ids, first.finish_reason) == (0, "Yo", (7,),
                                                                              "length")
    assert first.logprobs == () and first.top_logprobs == ()
    assert second.text == "Hi!" and second.token_ids == (4, 5, 6)
    assert second.finish_reason == "stop"
    assert second.logprobs == (-0.5, -0.25, -1.0)
    assert second.top_logprobs == ({4: -0.5}, {5: -0.25}, {6: -1.0})
    assert seen == [(1, "Hi")]  # empty text is not streamed; no callback given later
    assert result.generated_tokens == 4
    assert (result.prompt_tokens, result.cached_prompt_tokens) == (9, 3)
    assert result.request_id == "r" and result.extra == {"k": 1} and not result.timed_out
    assert result.first_token_s == pytest.approx(0.5)
    assert result.wall_s >= 0.5


def test_collector_drops_logprobs_not_asked_for() -> None:
    col = SampleCollector(1, want_logprobs=False)
    col.add(0, "a", [1], None, logprobs=[-0.1], top_logprobs=[{1: -0.1}])
    (sample,) = col.samples(timed_out=True)
    assert sample.logprobs == () and sample.top_logprobs == ()
    assert sample.finish_reason == "timeout"


def _logprob(value: float) -> SimpleNamespace:
    return SimpleNamespace(logprob=value)


def _output(
    *completions: SimpleNamespace, prompt_ids: tuple[int, ...] | None = (1, 2, 3),
    cached: int | None = None,
) -> SimpleNamespace:
    """A vLLM ``RequestOutput`` delta."""
    return SimpleNamespace(
        prompt_token_ids=None if prompt_ids is None else list(prompt_ids),
        num_cached_tokens=cached,
        outputs=list(completions),
    )


def _completion(
    index: int, text: str, ids: list[int], finish: str | None = None,
    logprobs: list[dict[int, SimpleNamespace]] | None = None,
) -> SimpleNamespace:
    """A vLLM ``CompletionOutput`` delta."""
    return SimpleNamespace(index=index, text=text, token_ids=ids, finish_reason=finish,
                           logprobs=logprobs)


def test_local_accumulator_reads_request_outputs() -> None:
    acc = _Accumulator(2, want_logprobs=True, prompt_tokens=0)
    streamed: list[tuple[int, str]] = []
    acc.add_output(
        _output(_completion(0, "a", [10], logprobs=[{10: _logprob(-0.5), 11: _logprob(-2.0)}]),
                _completion(1, "b", [12], logprobs=[{13: _logprob(-0.1)}]), cached=2),
        lambda i, t: streamed.append((i, t)),
    )
    acc.add_output(_output(_completion(0, "c", [14], "stop"), prompt_ids=None, cached=1), None)
    first, second = acc.samples(timed_out=False)
    assert (acc.prompt_tokens, acc.cached_tokens) == (3, 2)
    assert first.text == "ac" and first.token_ids == (10, 14) and first.finish_reason == "stop"
    assert first.logprobs == (-0.5,)
    assert first.top_logprobs == ({10: -0.5, 11: -2.0},)
    assert math.isnan(second.logprobs[0])  # the sampled token is not among the top ones
    assert second.finish_reason == "abort"
    assert streamed == [(0, "a"), (1, "b")]


def test_remote_stream_reads_sse_chunks() -> None:
    stream = _Stream(2, want_logprobs=True)
    streamed: list[tuple[int, str]] = []
    for chunk in _chunks():
        stream.add_chunk(chunk, lambda i, t: streamed.append((i, t)))
    first, second = stream.samples(timed_out=False)
    assert first.text == "Hello" and first.token_ids == (5, 6, 8)
    assert first.finish_reason == "stop"
    assert first.logprobs[0] == -0.1 and math.isnan(first.logprobs[1])
    assert first.top_logprobs == ({5: -0.1}, {6: -0.2}, {8: -0.3})
    assert second.text == "Yo" and second.finish_reason == "length"
    assert stream.usage["prompt_tokens"] == 4
    assert streamed == [(0, "Hel"), (1, "Yo"), (0, "lo")]


def _chunks() -> list[dict[str, Any]]:
    """The SSE chunks of a two-sample completion with log-probs and usage."""
    return [
        {"choices": [{"index": 0, "text": "Hel", "token_ids": [5, 6], "finish_reason": None,
                      "logprobs": {"token_logprobs": [-0.1, None],
                                   "top_logprobs": [{"token_id:5": -0.1},
                                                    {"token_id:6": -0.2}]}}]},
        {"choices": [{"index": 1, "text": "Yo", "token_ids": [7], "finish_reason": "length",
                      "logprobs": {"token_logprobs": [-0.4],
                                   "top_logprobs": [{"token_id:7": -0.4}]}}]},
        {"choices": [{"index": 0, "text": "lo", "token_ids": [8], "finish_reason": "stop",
                      "logprobs": {"token_logprobs": [-0.3],
                                   "top_logprobs": [{"token_id:8": -0.3}]}}]},
        {"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 4,
                                  "prompt_tokens_details": {"cached_tokens": 2}}},
    ]


# --------------------------------------------------------- in-process engine


class FakeAsyncLLM:
    """Enough of vLLM's ``AsyncLLM`` for `LocalVLLMEngine`: scripted deltas."""

    errored = False

    def __init__(self, deltas: list[SimpleNamespace], delays: list[float] | None = None) -> None:
        self.deltas = deltas
        self.delays = delays or [0.0] * len(deltas)
        self.calls: list[tuple[Any, ...]] = []
        self.shut_down = False

    async def generate(
        self, inputs: dict[str, Any], params: Any, request_id: str, priority: int = 0
    ) -> AsyncIterator[SimpleNamespace]:
        self.calls.append((inputs, params, request_id, priority))
        for delta, delay in zip(self.deltas, self.delays, strict=True):
            await asyncio.sleep(delay)
            yield delta

    def shutdown(self) -> None:
        self.shut_down = True


@pytest.fixture
def local_engine(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., LocalVLLMEngine]]:
    engines: list[LocalVLLMEngine] = []

    def make(llm: FakeAsyncLLM) -> LocalVLLMEngine:
        eng = LocalVLLMEngine()
        # what start() would have set up, without vLLM
        eng._llm, eng._tokenizer, eng._max_model_len = llm, FakeTokenizer(), 2048
        eng._runner = LoopThread("test-local-engine")
        monkeypatch.setattr(eng, "_sampling_params", lambda request: ("params", request.n))
        engines.append(eng)
        return eng

    yield make
    for eng in engines:
        eng.shutdown()


def test_local_engine_generates_from_deltas(local_engine: Callable[..., LocalVLLMEngine]) -> None:
    llm = FakeAsyncLLM([
        _output(_completion(0, "", []), _completion(1, "x", [21])),
        _output(_completion(0, "4", [22], "stop"), _completion(1, "y", [23], "length"),
                cached=2),
    ])
    eng = local_engine(llm)
    streamed: list[tuple[int, str]] = []
    result = eng.generate_sync(GenerationRequest(prompt="What is 2+2?", n=2, priority=3),
                               lambda i, t: streamed.append((i, t)))
    (inputs, params, request_id, priority), = llm.calls
    assert inputs == {"prompt_token_ids": FakeTokenizer().encode("What is 2+2?")}
    assert params == ("params", 2) and priority == 3
    assert request_id == result.request_id and request_id.startswith("tidal-")
    assert [(s.text, s.token_ids, s.finish_reason) for s in result.samples] == [
        ("4", (22,), "stop"), ("xy", (21, 23), "length")]
    assert (result.prompt_tokens, result.cached_prompt_tokens) == (3, 2)
    assert result.generated_tokens == 3 and not result.timed_out
    assert result.first_token_s is not None and result.first_token_s <= result.wall_s
    assert streamed == [(1, "x"), (0, "4"), (1, "y")]
    assert eng.in_flight_sequences == 0
    assert eng.count_tokens("a b c") == 3
    assert eng.apply_chat_template([{"role": "user", "content": "hi"}]).endswith("assistant:")


def test_local_engine_timeout_keeps_partial_output(
    local_engine: Callable[..., LocalVLLMEngine],
) -> None:
    llm = FakeAsyncLLM([_output(_completion(0, "par", [31])),
                        _output(_completion(0, "tial", [32], "stop"))], delays=[0.0, 5.0])
    eng = local_engine(llm)
    result = eng.generate_sync(GenerationRequest(prompt="hi", timeout_s=0.2))
    (sample,) = result.samples
    assert result.timed_out and sample.finish_reason == "timeout"
    assert sample.text == "par" and result.generated_tokens == 1


async def test_local_engine_async_generate(local_engine: Callable[..., LocalVLLMEngine]) -> None:
    eng = local_engine(FakeAsyncLLM([_output(_completion(0, "ok", [41], "stop"))]))
    result = await eng.generate(GenerationRequest(prompt=(5, 6), logprobs=0))
    assert result.samples[0].text == "ok" and result.prompt_tokens == 3


async def test_local_engine_counts_a_prompt_as_queued_until_its_first_output(
    local_engine: Callable[..., LocalVLLMEngine],
) -> None:
    llm = FakeAsyncLLM([_output(_completion(0, "o", [41])),
                        _output(_completion(0, "k", [42], "stop"))], delays=[0.3, 0.3])
    eng = local_engine(llm)
    prompt_tokens = len(FakeTokenizer().encode("What is 2+2?"))
    task = asyncio.ensure_future(eng.generate(GenerationRequest(prompt="What is 2+2?")))
    await asyncio.sleep(0.15)  # submitted, nothing prefilled yet
    assert eng.queued_prompt_tokens == prompt_tokens
    await asyncio.sleep(0.3)  # the first token is out: the prompt was prefilled
    assert eng.queued_prompt_tokens == 0 and eng.in_flight_sequences == 1
    await task
    assert eng.queued_prompt_tokens == 0 and eng.in_flight_sequences == 0
    # a request cut off before any output leaves the queue too
    slow = local_engine(FakeAsyncLLM([_output(_completion(0, "x", [1]))], delays=[5.0]))
    result = await slow.generate(GenerationRequest(prompt="hi", timeout_s=0.1))
    assert result.timed_out and slow.queued_prompt_tokens == 0


def test_local_engine_checks_the_prompt(local_engine: Callable[..., LocalVLLMEngine]) -> None:
    eng = local_engine(FakeAsyncLLM([]))
    with pytest.raises(TidalConfigError, match="exceeds the model's context"):
        eng.generate_sync(GenerationRequest(prompt="hi", max_tokens=5000))


def test_a_counted_prompt_is_not_tokenized_again_for_its_request(
    local_engine: Callable[..., LocalVLLMEngine],
) -> None:
    llm = FakeAsyncLLM([_output(_completion(0, "ok", [41], "stop"))])
    eng = local_engine(llm)
    encoded: list[str] = []
    tokenizer = eng._tokenizer
    real_encode = tokenizer.encode

    def counting_encode(text: str, add_special_tokens: bool = False) -> list[int]:
        encoded.append(text)
        return list(real_encode(text, add_special_tokens=add_special_tokens))

    tokenizer.encode = counting_encode
    prompt = "What is 2+2? Say it in words."
    assert eng.count_tokens(prompt) == len(real_encode(prompt))
    eng.generate_sync(GenerationRequest(prompt=prompt))
    assert encoded == [prompt]
    assert llm.calls[0][0] == {"prompt_token_ids": list(real_encode(prompt))}
    # counting tokenizes every time (a repeated prompt costs what a new one does)
    eng.count_tokens(prompt)
    assert encoded == [prompt, prompt]
    eng.generate_sync(GenerationRequest(prompt="not counted before"))
    assert encoded[-1] == "not counted before"


def test_local_engine_shutdown_closes_the_llm_once(
    local_engine: Callable[..., LocalVLLMEngine],
) -> None:
    llm = FakeAsyncLLM([])
    eng = local_engine(llm)
    eng.shutdown()
    eng.shutdown()
    assert llm.shut_down and not eng.is_running
    with pytest.raises(TidalEngineError, match="shut down"):
        eng.start()


# ----------------------------------------------------------------- lifecycle


class _ToyBackend(LoopBackend):
    """A backend whose resource is a string, opened on its loop."""

    def __init__(self, fail: Exception | None = None) -> None:
        super().__init__()
        self.fail = fail
        self.resource: str | None = None
        self.opens = 0
        self.closed: list[str] = []
        self.loop_threads: list[LoopThread] = []

    def _is_open(self) -> bool:
        return self.resource is not None

    def _open(self, runner: LoopThread) -> str:
        self.opens += 1
        self.loop_threads.append(runner)
        if self.fail is not None:
            raise self.fail
        self.resource = runner.submit(_resource()).result()
        return "card"

    def _start_error(self, exc: Exception) -> str:
        return f"toy failed: {exc}"

    def _opened(self, opened: Any) -> None:
        self._max_model_len = 7 if opened == "card" else 0

    def _detach(self) -> Any:
        resource, self.resource = self.resource, None
        return resource

    async def _close(self, resource: Any) -> None:
        self.closed.append(resource)


async def _resource() -> str:
    return "open"


def test_backend_starts_once_and_shuts_down_once() -> None:
    toy = _ToyBackend()
    assert toy.start() is toy and toy.start() is toy
    assert toy.opens == 1 and toy.max_model_len == 7
    assert toy.startup_s is not None
    toy.shutdown()
    toy.shutdown()
    assert toy.closed == ["open"]
    assert toy.loop_threads[0].loop.is_closed() or not toy.loop_threads[0]._thread.is_alive()
    with pytest.raises(TidalEngineError, match="shut down"):
        toy.start()


def test_backend_start_failure_is_wrapped_and_the_loop_stopped() -> None:
    toy = _ToyBackend(fail=RuntimeError("boom"))
    with pytest.raises(TidalEngineError, match="toy failed: boom"):
        toy.start()
    assert not toy.loop_threads[0]._thread.is_alive() and toy._runner is None
    config_error = _ToyBackend(fail=TidalConfigError("bad model"))
    with pytest.raises(TidalConfigError, match="bad model"):
        config_error.start()


# -------------------------------------------------------------- remote fleet


class MockFleet:
    """``vllm serve`` replicas behind an httpx mock transport."""

    def __init__(self, failing: frozenset[str] = frozenset(), slow_s: float = 0.0) -> None:
        self.failing = set(failing)
        self.slow_s = slow_s
        self.completions: list[tuple[str, dict[str, Any]]] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        host, path = request.url.host, request.url.path
        if path == "/v1/models":
            return httpx.Response(200, json={"data": [
                {"id": "toy-model", "max_model_len": 2048, "root": "/no/such/folder"}]})
        if path == "/version":
            return httpx.Response(200, json={"version": "0.0-test"})
        if path == "/health":
            return httpx.Response(503 if host in self.failing else 200)
        assert path == "/v1/completions"
        self.completions.append((host, json.loads(request.content)))
        if host in self.failing:
            return httpx.Response(503, json={"error": {"message": "overloaded"}})
        if self.slow_s:
            await asyncio.sleep(self.slow_s)
        n = json.loads(request.content)["n"]
        chunks = [{**c, "choices": [x for x in c["choices"] if x["index"] < n]}
                  for c in _chunks()]
        lines = [f"data: {json.dumps(c)}" for c in chunks] + ["data: [DONE]"]
        return httpx.Response(200, content="\n\n".join(lines).encode(),
                              headers={"content-type": "text/event-stream"})


@pytest.fixture
def remote_engine(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., RemoteVLLMEngine]]:
    engines: list[RemoteVLLMEngine] = []
    monkeypatch.setattr(remote_module, "_load_tokenizer", lambda path, root: FakeTokenizer())

    def make(
        fleet: MockFleet, urls: tuple[str, ...] = ("http://a", "http://b")
    ) -> RemoteVLLMEngine:
        eng = RemoteVLLMEngine(list(urls), tokenizer="fake")

        async def make_client() -> httpx.AsyncClient:
            return httpx.AsyncClient(transport=httpx.MockTransport(fleet))

        monkeypatch.setattr(eng, "_make_client", make_client)
        engines.append(eng)
        return eng

    yield make
    for eng in engines:
        eng.shutdown()


def test_remote_engine_streams_a_completion(
    remote_engine: Callable[..., RemoteVLLMEngine],
) -> None:
    fleet = MockFleet()
    eng = remote_engine(fleet)
    streamed: list[tuple[int, str]] = []
    result = eng.generate_sync(GenerationRequest(prompt="hi there", n=2, logprobs=1, seed=3),
                               lambda i, t: streamed.append((i, t)))
    assert eng.model_name == "toy-model" and eng.max_model_len == 2048
    (host, body), = fleet.completions
    assert body["prompt"] == FakeTokenizer().encode("hi there")
    assert body["n"] == 2 and body["logprobs"] == 1 and body["seed"] == 3 and body["stream"]
    assert [(s.text, s.token_ids, s.finish_reason) for s in result.samples] == [
        ("Hello", (5, 6, 8), "stop"), ("Yo", (7,), "length")]
    assert result.samples[0].top_logprobs[0] == {5: -0.1}
    assert (result.prompt_tokens, result.cached_prompt_tokens) == (4, 2)
    assert result.generated_tokens == 4 and not result.timed_out
    assert result.extra == {"replica": f"http://{host}", "attempts": [f"http://{host}"]}
    assert result.first_token_s is not None and 0 <= result.first_token_s <= result.wall_s
    assert streamed == [(0, "Hel"), (1, "Yo"), (0, "lo")]


def test_remote_engine_fails_over_to_a_healthy_replica(
    remote_engine: Callable[..., RemoteVLLMEngine],
) -> None:
    fleet = MockFleet(failing=frozenset({"a"}))
    eng = remote_engine(fleet, ("http://a", "http://b"))
    first = eng.generate_sync(GenerationRequest(prompt="hi"))
    assert [h for h, _ in fleet.completions][-1] == "b"
    assert first.extra["replica"] == "http://b"
    assert first.extra["attempts"] in (["http://b"], ["http://a", "http://b"])
    assert first.samples[0].text == "Hello"


def test_remote_engine_gives_up_after_every_replica_and_one_more(
    remote_engine: Callable[..., RemoteVLLMEngine],
) -> None:
    fleet = MockFleet(failing=frozenset({"a", "b"}))
    eng = remote_engine(fleet, ("http://a", "http://b"))
    with pytest.raises(TidalEngineError, match="failed on every try"):
        eng.generate_sync(GenerationRequest(prompt="hi"))
    assert sorted(h for h, _ in fleet.completions) == ["a", "b"]
    assert not eng.is_running


def test_remote_engine_stops_retrying_at_the_deadline(
    remote_engine: Callable[..., RemoteVLLMEngine],
) -> None:
    urls = tuple(f"http://r{i}" for i in range(8))
    fleet = MockFleet(failing=frozenset(f"r{i}" for i in range(8)))
    eng = remote_engine(fleet, urls)
    with pytest.raises(TidalEngineError, match="failed on every try"):
        eng.generate_sync(GenerationRequest(prompt="hi", timeout_s=0.12))
    # waits of 0.05, 0.1, ... s between tries: the deadline ends it well before 9 tries
    assert 1 <= len(fleet.completions) <= 4


def test_remote_engine_timeout_returns_what_it_has(
    remote_engine: Callable[..., RemoteVLLMEngine],
) -> None:
    eng = remote_engine(MockFleet(slow_s=5.0), ("http://a",))
    result = eng.generate_sync(GenerationRequest(prompt="hi", timeout_s=0.2))
    assert result.timed_out and result.samples[0].finish_reason == "timeout"
    assert result.extra["attempts"] == ["http://a"]


class _DeadAsyncLLM(FakeAsyncLLM):
    """An engine core that is gone: every request finds it dead."""

    errored = True


def test_a_restart_after_a_second_death_completes_when_its_caller_gives_up(
    local_engine: Callable[..., LocalVLLMEngine],
) -> None:
    # the engine dies, is restarted, and the restarted one is dead too: the second
    # restart must not be left half-done (no engine at all) by a caller that gives up
    eng = local_engine(_DeadAsyncLLM([]))
    eng.config = eng.config.model_copy(update={"max_restarts": 2, "restart_backoff_s": 0.3})
    created = iter([_DeadAsyncLLM([]), FakeAsyncLLM([_output(_completion(0, "ok", [41], "stop"))])])

    async def create() -> Any:
        return next(created)

    eng._create = create  # type: ignore[method-assign]
    future = eng._submit(eng._generate(GenerationRequest(prompt="hi"), None))
    for _ in range(200):  # the second restart is under way
        if eng.restarts == 1 and eng._restart_lock is not None and eng._restart_lock.locked():
            break
        time.sleep(0.01)
    assert eng.restarts == 1
    future.cancel()  # the caller gives up during the second restart's back-off
    for _ in range(200):
        if eng.restarts == 2:
            break
        time.sleep(0.01)
    assert eng.restarts == 2 and eng.is_running
    assert eng.generate_sync(GenerationRequest(prompt="hi")).samples[0].text == "ok"
