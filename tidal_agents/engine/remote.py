"""A fleet of ``vllm serve`` replicas behind the same `Engine` interface.

Speaks vLLM's OpenAI-compatible ``/v1/completions`` with token-id prompts and
vLLM's extra request fields (``structured_outputs``, ``return_token_ids``,
``return_tokens_as_token_ids``), streaming, so that a step's timeout can close
the request (vLLM aborts a request whose client went away) and keep what was
generated so far. Requests go to the healthy replica with the fewest requests
in flight; a replica that drops a connection or answers 5xx is marked down, the
request is retried on another one (tenacity, never past the request's own
timeout), and a down replica is probed on ``/health`` before it is used again.

The chat template and token counts come from a local tokenizer: the model folder
the servers report (``root`` in ``/v1/models``) when it exists here, else the
``tokenizer`` argument.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tidal_agents.engine._backend import LoopBackend, SampleCollector
from tidal_agents.engine.loop_thread import LoopThread
from tidal_agents.engine.retry import retrying_until
from tidal_agents.engine.types import GenerationRequest, GenerationResult, TokenCallback
from tidal_agents.errors import TidalConfigError, TidalEngineError

logger = logging.getLogger(__name__)


class _ReplicaFailed(Exception):
    """A transient failure of one replica: retried on another one."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"{url}: {reason}")
        self.url = url
        self.reason = reason


@dataclass
class Replica:
    """One ``vllm serve`` base URL and what we know about it."""

    url: str
    healthy: bool = True
    outstanding: int = 0
    outstanding_sequences: int = 0
    served: int = 0
    failures: int = 0
    down_since: float = 0.0


class _Stream(SampleCollector):
    """Collects one streamed completion (its SSE chunks), per choice index."""

    def __init__(self, n: int, want_logprobs: bool) -> None:
        super().__init__(n, want_logprobs)
        self.usage: dict[str, Any] = {}

    def add_chunk(self, chunk: dict[str, Any], on_text: TokenCallback) -> None:
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            logprobs, top = _logprobs_of(choice) if self.want_logprobs else ([], [])
            self.add(
                int(choice["index"]),
                choice.get("text") or "",
                [int(t) for t in choice.get("token_ids") or ()],
                choice.get("finish_reason"),
                logprobs=logprobs,
                top_logprobs=top,
                on_token=on_text,
            )


def _logprobs_of(choice: dict[str, Any]) -> tuple[list[float], list[dict[int, float]]]:
    """The sampled tokens' log-probs and their top alternatives in one streamed choice."""
    lp = choice.get("logprobs")
    if not lp:
        return [], []
    return (
        [float("nan") if v is None else float(v) for v in lp["token_logprobs"]],
        [{_token_id(k): float(v) for k, v in (pos or {}).items()} for pos in lp["top_logprobs"]],
    )


def _prefix_key(ids: list[int], block: int = 64, most: int = 512) -> int | None:
    """A key for the prompt's leading whole blocks of `block` tokens (None if shorter)."""
    n = min(len(ids) // block * block, most)
    return hash(tuple(ids[:n])) if n else None


def _token_id(key: str) -> int:
    # With return_tokens_as_token_ids the server names tokens "token_id:123".
    return int(key.rsplit(":", 1)[-1])


class _PrefixGuard:
    """Streams each sample's text once, even when a retry regenerates it.

    After a failover the retry starts from scratch; only text beyond what the
    caller already saw is passed on, and nothing once the retry diverges.
    """

    def __init__(self, n: int, on_token: TokenCallback | None) -> None:
        self.emitted = [""] * n
        self.current = [""] * n
        self.on_token = on_token

    def restart(self) -> None:
        self.current = [""] * len(self.current)

    def __call__(self, index: int, delta: str) -> None:
        self.current[index] += delta
        cur, seen = self.current[index], self.emitted[index]
        if self.on_token is None or len(cur) <= len(seen) or not cur.startswith(seen):
            return
        self.emitted[index] = cur
        self.on_token(index, cur[len(seen):])


class RemoteVLLMEngine(LoopBackend):
    """One or more ``vllm serve`` base URLs (e.g. ``http://10.0.0.5:8000``).

    Args:
        base_urls: one URL or several replicas serving the same model.
        model: the served model name; None takes the servers' first model.
        tokenizer: a local HF folder for the chat template; None uses the
            folder the servers report when it exists on this machine.
        api_key: sent as ``Authorization: Bearer`` (``vllm serve --api-key``).
        connect_timeout_s: how long to wait for a TCP connection.
        health_retry_s: how long a failed replica rests before it is probed.
        max_connections: the HTTP connection pool size.
    """

    _thread_name = "tidal-vllm-remote"

    def __init__(
        self,
        base_urls: str | Sequence[str],
        *,
        model: str | None = None,
        tokenizer: str | None = None,
        api_key: str | None = None,
        connect_timeout_s: float = 5.0,
        health_retry_s: float = 2.0,
        max_connections: int = 256,
    ) -> None:
        urls = [base_urls] if isinstance(base_urls, str) else list(base_urls)
        if not urls or not all(isinstance(u, str) and u.startswith(("http://", "https://"))
                               for u in urls):
            raise TidalConfigError(
                f"base_urls={base_urls!r}: pass one or more http(s):// URLs of `vllm serve`."
            )
        if len(set(urls)) != len(urls):
            raise TidalConfigError(f"base_urls={urls!r} lists a URL twice.")
        for name, value in (("connect_timeout_s", connect_timeout_s),
                            ("health_retry_s", health_retry_s)):
            if not isinstance(value, (int, float)) or not 0 < value < 3600:
                raise TidalConfigError(f"{name}={value!r}: allowed is 0 < value < 3600 seconds.")
        super().__init__()
        self.replicas = [Replica(u.rstrip("/").removesuffix("/v1")) for u in urls]
        # prompt-prefix key -> the replica that last served it (its KV cache has it)
        self._affinity: OrderedDict[int, str] = OrderedDict()
        self._model = model
        self._tokenizer_path = tokenizer
        self._api_key = api_key if api_key is not None else os.environ.get("VLLM_API_KEY")
        self._connect_timeout_s = float(connect_timeout_s)
        self._health_retry_s = float(health_retry_s)
        self._max_connections = max_connections
        self._client: Any = None
        self._server_version = ""

    # ---------------------------------------------------------------- lifecycle
    def _is_open(self) -> bool:
        return self._client is not None

    def _open(self, runner: LoopThread) -> dict[str, Any]:
        """Connect, and read the served model's card (its name and context size)."""
        self._client = runner.submit(self._make_client()).result()
        return runner.submit(self._describe()).result()

    def _start_error(self, exc: Exception) -> str:
        return f"Cannot reach vLLM at {self.urls}: {exc}"

    def _opened(self, opened: Any) -> None:
        self._model = opened["id"]
        self._max_model_len = int(opened.get("max_model_len") or 0)
        self._tokenizer = _load_tokenizer(self._tokenizer_path, opened.get("root"))

    def _detach(self) -> Any:
        client, self._client = self._client, None
        return client

    async def _close(self, resource: Any) -> None:
        await resource.aclose()

    async def _make_client(self) -> Any:
        import httpx

        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        return httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(None, connect=self._connect_timeout_s),
            limits=httpx.Limits(
                max_connections=self._max_connections,
                max_keepalive_connections=self._max_connections,
            ),
        )

    async def _describe(self) -> dict[str, Any]:
        """The served model's card from the first replica that answers."""
        errors = []
        for rep in self.replicas:
            try:
                resp = await self._client.get(f"{rep.url}/v1/models", timeout=10)
                _raise_for_status(rep.url, resp)
                models = resp.json()["data"]
                version = await self._client.get(f"{rep.url}/version", timeout=10)
                self._server_version = version.json().get("version", "") if version.is_success \
                    else ""
            except Exception as exc:  # try the next replica
                rep.healthy, rep.down_since = False, time.monotonic()
                errors.append(f"{rep.url}: {type(exc).__name__}: {exc}")
                continue
            for card in models:
                if self._model is None or card["id"] == self._model:
                    return dict(card)
            raise TidalConfigError(
                f"model={self._model!r} is not served at {rep.url}; it serves "
                f"{[m['id'] for m in models]}."
            )
        raise TidalEngineError("No vLLM replica answered: " + "; ".join(errors))

    # -------------------------------------------------------------- properties
    @property
    def is_running(self) -> bool:
        """Connected, and at least one replica is not marked down."""
        return self._client is not None and any(r.healthy for r in self.replicas)

    @property
    def in_flight_sequences(self) -> int:
        """Sequences in flight on the least-loaded healthy replica (where the next
        request goes), as far as this client knows."""
        up = [r.outstanding_sequences for r in self.replicas if r.healthy]
        return min(up, default=0)

    @property
    def queued_prompt_tokens(self) -> int:
        """Unknown to a client (each server keeps its own queue): 0; the cost model's
        load factor learns a busy fleet from measured steps."""
        return 0

    @property
    def urls(self) -> list[str]:
        return [r.url for r in self.replicas]

    @property
    def model_name(self) -> str:
        self.start()
        assert self._model is not None
        return self._model

    @property
    def backend_id(self) -> str:
        # Calibrations are per fleet: the same model on other machines costs otherwise.
        self.start()
        return f"{self._model}|vllm-{self._server_version}-remote|{','.join(sorted(self.urls))}"

    # ------------------------------------------------------------- generation
    def _body(self, request: GenerationRequest, ids: list[int], request_id: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self._model,
            "prompt": ids,
            "n": request.n,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "max_tokens": request.max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
            "return_token_ids": True,
            "return_tokens_as_token_ids": True,
            "ignore_eos": request.ignore_eos,
            "request_id": request_id,
            "add_special_tokens": False,
        }
        if request.seed is not None:
            body["seed"] = request.seed
        if request.stop:
            body["stop"] = list(request.stop)
        if request.logprobs is not None:
            body["logprobs"] = request.logprobs
        if request.priority:
            body["priority"] = request.priority
        if request.guided is not None:
            g = request.guided
            body["structured_outputs"] = (
                {"json": g.json_schema} if g.json_schema is not None
                else {"regex": g.regex} if g.regex is not None
                else {"choice": list(g.choice or ())}
            )
        return body

    async def _generate(
        self, request: GenerationRequest, on_token: TokenCallback | None
    ) -> GenerationResult:
        if self._client is None:
            raise TidalEngineError("The engine is not running (it was shut down).")
        ids = self._prompt_ids(request)
        request_id = f"tidal-{uuid.uuid4().hex[:16]}"
        t0 = time.perf_counter()
        ends_at = None if request.timeout_s is None else time.monotonic() + request.timeout_s
        guard = _PrefixGuard(request.n, on_token)
        attempts: list[str] = []
        retrying = retrying_until(
            ends_at,
            retry_on=_ReplicaFailed,
            # Every replica once, plus one more try for one that came back.
            attempts=len(self.replicas) + 1,
            wait_multiplier=0.05,
            wait_max=1.0,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    rep = await self._pick(_prefix_key(ids))
                    attempts.append(rep.url)
                    guard.restart()
                    body = self._body(request, ids, f"{request_id}-{len(attempts)}")
                    remaining = None if ends_at is None else max(ends_at - time.monotonic(), 0)
                    stream, timed_out = await self._stream_from(
                        rep, body, request, remaining, guard
                    )
        except _ReplicaFailed as exc:
            raise TidalEngineError(
                f"vLLM request {request_id} failed on every try ({attempts}); last: {exc}. "
                "Check that the servers are up (GET /health)."
            ) from exc
        usage = stream.usage
        details = usage.get("prompt_tokens_details") or {}
        return stream.result(
            started=t0,
            timed_out=timed_out,
            request_id=request_id,
            prompt_tokens=int(usage.get("prompt_tokens") or len(ids)),
            cached_prompt_tokens=int(details.get("cached_tokens") or 0),
            extra={"replica": attempts[-1], "attempts": attempts},
        )

    async def _stream_from(
        self,
        rep: Replica,
        body: dict[str, Any],
        request: GenerationRequest,
        timeout_s: float | None,
        guard: _PrefixGuard,
    ) -> tuple[_Stream, bool]:
        import httpx

        stream = _Stream(request.n, request.logprobs is not None)
        done = False
        rep.outstanding += 1
        rep.outstanding_sequences += request.n
        try:
            async with asyncio.timeout(timeout_s):
                async with self._client.stream(
                    "POST", f"{rep.url}/v1/completions", json=body
                ) as resp:
                    if resp.status_code >= 400:
                        await resp.aread()
                        _raise_for_status(rep.url, resp)
                    async for line in resp.aiter_lines():
                        if not line.startswith("data: "):
                            continue
                        data = line[len("data: "):]
                        if data == "[DONE]":
                            done = True
                            break
                        chunk = json.loads(data)
                        if "error" in chunk:
                            _raise_stream_error(rep.url, chunk["error"])
                        stream.add_chunk(chunk, guard)
                        self._last_output = time.monotonic()
            if not done:
                raise _ReplicaFailed(rep.url, "the stream ended before [DONE]")
        except TimeoutError:
            # Leaving the `async with` closed the connection; vLLM aborts the request.
            rep.served += 1
            return stream, True
        except httpx.TransportError as exc:
            self._mark_down(rep)
            raise _ReplicaFailed(rep.url, f"{type(exc).__name__}: {exc}") from exc
        except _ReplicaFailed:
            self._mark_down(rep)
            raise
        finally:
            rep.outstanding -= 1
            rep.outstanding_sequences -= request.n
        rep.served += 1
        rep.healthy, rep.failures = True, 0
        return stream, False

    def _mark_down(self, rep: Replica) -> None:
        rep.failures += 1
        rep.healthy, rep.down_since = False, time.monotonic()
        logger.warning("vLLM replica %s marked down (failure %d)", rep.url, rep.failures)

    async def _pick(self, prefix: int | None = None) -> Replica:
        """The healthy replica with the fewest requests in flight; ties go to the
        one that last served this prompt's prefix (its prefix cache holds it)."""
        up = [r for r in self.replicas if r.healthy]
        if not up:
            now = time.monotonic()
            resting = [r for r in self.replicas if now - r.down_since >= self._health_retry_s]
            probes = await asyncio.gather(*(self._probe(r) for r in resting))
            up = [r for r, ok in zip(resting, probes, strict=True) if ok]
        if not up:
            raise _ReplicaFailed(",".join(self.urls), "no replica is healthy")
        warm = self._affinity.get(prefix) if prefix is not None else None
        rep = min(up, key=lambda r: (r.outstanding, r.url != warm, r.served))
        if prefix is not None:
            self._affinity[prefix] = rep.url
            self._affinity.move_to_end(prefix)
            if len(self._affinity) > 4096:
                self._affinity.popitem(last=False)
        return rep

    async def _probe(self, rep: Replica) -> bool:
        try:
            resp = await self._client.get(f"{rep.url}/health", timeout=self._connect_timeout_s)
            ok = bool(resp.status_code == 200)
        except Exception:
            ok = False
        if ok:
            rep.healthy = True
        else:
            rep.down_since = time.monotonic()
        return ok

    async def check_health(self) -> dict[str, bool]:
        """Probe every replica now; returns {url: healthy}."""
        self.start()
        assert self._runner is not None
        reps = self.replicas
        results = await self._runner.run(_gather(*(self._probe(r) for r in reps)))
        for rep, ok in zip(reps, results, strict=True):
            rep.healthy = ok
        return {r.url: ok for r, ok in zip(reps, results, strict=True)}


async def _gather(*coros: Any) -> list[Any]:
    return list(await asyncio.gather(*coros))


def _raise_for_status(url: str, resp: Any) -> None:
    if resp.status_code < 400:
        return
    try:
        detail = resp.json()
        message = (detail.get("error") or {}).get("message") or detail.get("message") or detail
    except Exception:
        message = resp.text[:500]
    if resp.status_code in (400, 404, 413, 422):
        raise TidalConfigError(f"vLLM at {url} rejected the request ({resp.status_code}): "
                               f"{message}")
    if resp.status_code in (401, 403):
        raise TidalConfigError(f"vLLM at {url} refused the API key ({resp.status_code}); pass "
                               "api_key= or set VLLM_API_KEY.")
    raise _ReplicaFailed(url, f"HTTP {resp.status_code}: {message}")


def _raise_stream_error(url: str, error: Any) -> None:
    message = error.get("message", error) if isinstance(error, dict) else error
    code = error.get("code") if isinstance(error, dict) else None
    if code in (400, 422):
        raise TidalConfigError(f"vLLM at {url} rejected the request: {message}")
    raise _ReplicaFailed(url, f"error in stream: {message}")


def _load_tokenizer(path: str | None, served_root: str | None) -> Any:
    from transformers import AutoTokenizer

    if path is None and served_root and os.path.isdir(served_root):
        path = served_root
    if path is None:
        raise TidalConfigError(
            f"The servers' model folder {served_root!r} is not on this machine; pass "
            "tokenizer='<local HF folder or name>' so prompts can be formatted here."
        )
    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as exc:
        raise TidalConfigError(f"Cannot load the tokenizer from {path!r}: {exc}") from exc


# ------------------------------------------------------------- shared engines
_REMOTES: dict[tuple[Any, ...], RemoteVLLMEngine] = {}
_REMOTES_LOCK = threading.Lock()


def get_remote_engine(
    base_urls: str | Sequence[str],
    *,
    model: str | None = None,
    tokenizer: str | None = None,
    api_key: str | None = None,
    start: bool = True,
) -> RemoteVLLMEngine:
    """The process-wide remote engine for these URLs (one connection pool each)."""
    urls = (base_urls,) if isinstance(base_urls, str) else tuple(base_urls)
    key = (urls, model, tokenizer, api_key)
    with _REMOTES_LOCK:
        engine = _REMOTES.get(key)
        if engine is None or engine._closed:
            engine = RemoteVLLMEngine(urls, model=model, tokenizer=tokenizer, api_key=api_key)
            _REMOTES[key] = engine
    return engine.start() if start else engine
