"""An OpenAI-compatible HTTP front (``tidal-agents serve``) for agents outside LangChain.

``POST /v1/chat/completions`` runs one agent step through `TidalChatModel`:
allocation per request, tools through the grammar protocol, the decision record
returned in the response's ``tidal`` field. The deadline comes from the body
(``tidal_deadline_s``, ``tidal_episode_id``: ``extra_body`` in the ``openai``
client) or the headers ``X-Tidal-Deadline-S`` / ``X-Tidal-Episode-Id``; requests
with the same episode id share one deadline.

Safe defaults: loopback only unless ``allow_remote`` (which then needs an API
key), an optional API key (``Authorization: Bearer``), a request size limit and
a max-tokens limit. User input is parsed as JSON only, never evaluated.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from langchain_core.callbacks import AsyncCallbackHandler
from langchain_core.messages import AIMessage, BaseMessage, convert_to_messages
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from tidal_agents.chat_model import STEP_EVENT, TidalChatModel
from tidal_agents.errors import (
    EpisodeDeadlineExceeded,
    TidalConfigError,
    TidalEngineError,
    TidalError,
)

logger = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "localhost", "::1")
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class ServerSettings(BaseModel):
    """How ``tidal-agents serve`` listens and what it accepts."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    allow_remote: bool = False
    """Bind beyond loopback; refused without an API key."""
    api_key: SecretStr | None = None
    """Required as ``Authorization: Bearer <key>`` on /v1 when set."""
    served_model_name: str = "tidal"
    max_request_bytes: int = Field(default=1_000_000, ge=1024)
    max_tokens_limit: int = Field(default=1024, ge=1)
    max_messages: int = Field(default=256, ge=1)
    max_deadline_s: float = Field(default=600.0, gt=0)

    def check(self) -> None:
        if self.host not in LOOPBACK and not self.allow_remote:
            raise TidalConfigError(
                f"host={self.host!r} is not loopback; pass allow_remote=True "
                "(--allow-remote) to serve other machines, with an API key."
            )
        if self.host not in LOOPBACK and self.api_key is None:
            raise TidalConfigError(
                f"Serving on {self.host!r} needs an API key (--api-key or TIDAL_API_KEY)."
            )


class ChatCompletionRequest(BaseModel):
    """The subset of OpenAI's chat-completions body that is honoured.

    Other OpenAI fields are accepted and ignored (clients send many defaults);
    values that would change the meaning (n > 1, logprobs) are refused.
    """

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    messages: list[dict[str, Any]] = Field(min_length=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    stop: str | list[str] | None = None
    stream: bool = False
    n: int = Field(default=1, ge=1, le=1)
    logprobs: bool | None = Field(default=None)
    response_format: dict[str, Any] | None = None
    tidal_deadline_s: float | None = Field(default=None, gt=0)
    tidal_episode_id: str | None = Field(default=None, min_length=1, max_length=200)
    tidal_lambda_tokens: float | None = Field(default=None, ge=0)
    tidal_lambda_latency: float | None = Field(default=None, ge=0)


class _StepRecorder(AsyncCallbackHandler):
    """Keeps the step record the chat model emits as a custom event."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    async def on_custom_event(self, name: str, data: Any, **kwargs: Any) -> None:
        if name == STEP_EVENT:
            self.records.append(data)


class HTTPError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error",
                 param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param = status, message, kind, param

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param,
                          "code": self.status}}


def create_app(
    model: TidalChatModel | None = None, settings: ServerSettings | None = None
) -> FastAPI:
    """The FastAPI application fronting `model` (default: the embedded model)."""
    settings = settings or ServerSettings()
    chat = model or TidalChatModel()
    app = FastAPI(title="tidal_agents OpenAI-compatible front", docs_url=None, redoc_url=None)
    app.add_middleware(_BodyLimit, limit=settings.max_request_bytes)  # type: ignore[arg-type]

    @app.exception_handler(HTTPError)
    async def _http_error(request: Request, exc: HTTPError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    def authorise(request: Request) -> None:
        if settings.api_key is None:
            return
        given = request.headers.get("authorization", "")
        expected = "Bearer " + settings.api_key.get_secret_value()
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise HTTPError(401, "Missing or wrong API key (Authorization: Bearer ...).",
                            "authentication_error")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        authorise(request)
        return {"object": "list", "data": [
            {"id": settings.served_model_name, "object": "model", "owned_by": "tidal_agents",
             "root": chat.model_name}
        ]}

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(request: Request) -> JSONResponse | StreamingResponse:
        authorise(request)
        try:
            payload = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError) as exc:
            raise HTTPError(400, f"The body is not valid JSON: {exc}") from exc
        try:
            body = ChatCompletionRequest.model_validate(payload)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise HTTPError(400, f"{where}: {first['msg']}", param=where) from exc
        runnable, messages, config, recorder = _prepare(chat, body, request.headers, settings)
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        if body.stream:
            return StreamingResponse(
                _sse(runnable, messages, config, recorder, completion_id, settings),
                media_type="text/event-stream",
            )
        try:
            message = await runnable.ainvoke(messages, config=config)
        except Exception as exc:
            raise _http_error_for(exc) from exc
        return JSONResponse(_completion(message, recorder, completion_id, settings))

    return app


def _prepare(
    chat: TidalChatModel, body: ChatCompletionRequest, headers: Any, settings: ServerSettings
) -> tuple[Any, list[BaseMessage], dict[str, Any], _StepRecorder]:
    if len(body.messages) > settings.max_messages:
        raise HTTPError(400, f"messages has {len(body.messages)} entries; at most "
                             f"{settings.max_messages} are allowed.", param="messages")
    if body.logprobs:
        raise HTTPError(400, "logprobs are not returned: the answer may be a vote over "
                             "several samples.", param="logprobs")
    try:
        messages = convert_to_messages(body.messages)
    except Exception as exc:
        raise HTTPError(400, f"messages: {exc}", param="messages") from exc
    max_tokens = body.max_completion_tokens or body.max_tokens or chat.max_tokens
    if max_tokens > settings.max_tokens_limit:
        raise HTTPError(400, f"max_tokens={max_tokens} is above this server's limit of "
                             f"{settings.max_tokens_limit}.", param="max_tokens")
    kwargs: dict[str, Any] = {}
    if body.stop:
        kwargs["stop"] = [body.stop] if isinstance(body.stop, str) else body.stop
    schema = _response_schema(body.response_format)
    if schema is not None:
        kwargs["response_format"] = schema
    _ = chat.cost_model  # one cost model, shared by the per-request copies
    update: dict[str, Any] = {"max_tokens": max_tokens}
    if body.temperature is not None:
        update["temperature"] = body.temperature
    runnable: Any = chat.model_copy(update=update)
    try:
        if body.tools and schema is None:
            runnable = runnable.bind_tools(
                body.tools, tool_choice=body.tool_choice,
                parallel_tool_calls=body.parallel_tool_calls,
            )
        if kwargs:
            runnable = runnable.bind(**kwargs)
    except (TidalError, ValueError, TypeError, KeyError) as exc:
        raise HTTPError(400, f"tools: {exc}", param="tools") from exc
    configurable = _episode_keys(body, headers, settings)
    recorder = _StepRecorder()
    return runnable, messages, {"configurable": configurable, "callbacks": [recorder]}, recorder


def _response_schema(response_format: dict[str, Any] | None) -> dict[str, Any] | None:
    """OpenAI's response_format as the JSON schema to decode under (None: free text)."""
    if not response_format or response_format.get("type") == "text":
        return None
    kind = response_format.get("type")
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        if isinstance(schema, dict):
            return schema
    raise HTTPError(400, "response_format: allowed are {'type': 'text'}, {'type': "
                         "'json_object'} and {'type': 'json_schema', 'json_schema': "
                         "{'schema': {...}}}.", param="response_format")


def _episode_keys(body: ChatCompletionRequest, headers: Any,
                  settings: ServerSettings) -> dict[str, Any]:
    deadline = body.tidal_deadline_s
    header = headers.get("x-tidal-deadline-s")
    if deadline is None and header is not None:
        try:
            deadline = float(header)
        except ValueError:
            deadline = math.nan
        if not math.isfinite(deadline) or deadline <= 0:
            raise HTTPError(400, f"X-Tidal-Deadline-S={header!r}: allowed is a number of "
                                 "seconds > 0.", param="X-Tidal-Deadline-S")
    episode_id = body.tidal_episode_id or headers.get("x-tidal-episode-id")
    if deadline is None:
        if episode_id or body.tidal_lambda_tokens is not None \
                or body.tidal_lambda_latency is not None:
            raise HTTPError(400, "tidal_* fields need tidal_deadline_s (or the "
                                 "X-Tidal-Deadline-S header).", param="tidal_deadline_s")
        return {}
    if deadline > settings.max_deadline_s:
        raise HTTPError(400, f"tidal_deadline_s={deadline:g} is above this server's limit "
                             f"of {settings.max_deadline_s:g} s.", param="tidal_deadline_s")
    keys: dict[str, Any] = {"tidal_deadline_s": deadline}
    if episode_id:
        keys["tidal_episode_id"] = episode_id
    if body.tidal_lambda_tokens is not None:
        keys["tidal_lambda_tokens"] = body.tidal_lambda_tokens
    if body.tidal_lambda_latency is not None:
        keys["tidal_lambda_latency"] = body.tidal_lambda_latency
    return keys


def _tool_calls(message: AIMessage) -> list[dict[str, Any]]:
    return [
        {"id": c["id"], "type": "function",
         "function": {"name": c["name"], "arguments": json.dumps(c["args"])}}
        for c in message.tool_calls
    ]


def _finish(message: AIMessage) -> str:
    if message.tool_calls:
        return "tool_calls"
    return "length" if message.response_metadata.get("finish_reason") == "length" else "stop"


def _usage(message: AIMessage) -> dict[str, Any]:
    u = message.usage_metadata or {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}
    details = u.get("input_token_details") or {}
    return {"prompt_tokens": u["input_tokens"], "completion_tokens": u["output_tokens"],
            "total_tokens": u["total_tokens"],
            "prompt_tokens_details": {"cached_tokens": details.get("cache_read", 0)}}


def _tidal(message: AIMessage, recorder: _StepRecorder) -> dict[str, Any]:
    summary = dict(message.response_metadata.get("tidal") or {})
    summary["step"] = recorder.records[-1] if recorder.records else None
    return _strict_json(summary)


def _strict_json(value: Any) -> Any:
    """Standard JSON has no NaN / Infinity (e.g. the utility of an infeasible
    candidate): those become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(v) for v in value]
    return value


def _completion(message: AIMessage, recorder: _StepRecorder, completion_id: str,
                settings: ServerSettings) -> dict[str, Any]:
    reply: dict[str, Any] = {"role": "assistant", "content": message.text or None}
    if message.tool_calls:
        reply["tool_calls"] = _tool_calls(message)
    return {
        "id": completion_id, "object": "chat.completion", "created": int(time.time()),
        "model": settings.served_model_name,
        "choices": [{"index": 0, "message": reply, "finish_reason": _finish(message),
                     "logprobs": None}],
        "usage": _usage(message),
        "tidal": _tidal(message, recorder),
    }


async def _sse(runnable: Any, messages: list[BaseMessage], config: dict[str, Any],
               recorder: _StepRecorder, completion_id: str,
               settings: ServerSettings) -> AsyncIterator[str]:
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        data = {"id": completion_id, "object": "chat.completion.chunk", "created": created,
                "model": settings.served_model_name,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
        return f"data: {json.dumps(data)}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    final: Any = None
    try:
        async for part in runnable.astream(messages, config=config):
            final = part if final is None else final + part
            if isinstance(part.content, str) and part.content:
                yield chunk({"content": part.content})
    except Exception as exc:  # the status line is gone: report in the stream
        err = _http_error_for(exc)
        yield f"data: {json.dumps(err.body())}\n\n"
        yield "data: [DONE]\n\n"
        return
    message = AIMessage(content=final.content, tool_calls=final.tool_calls,
                        usage_metadata=final.usage_metadata,
                        response_metadata=final.response_metadata)
    delta: dict[str, Any] = {}
    if message.tool_calls:
        delta["tool_calls"] = [{"index": i, **c} for i, c in enumerate(_tool_calls(message))]
    yield chunk(delta, _finish(message), usage=_usage(message), tidal=_tidal(message, recorder))
    yield "data: [DONE]\n\n"


def _http_error_for(exc: Exception) -> HTTPError:
    if isinstance(exc, HTTPError):
        return exc
    if isinstance(exc, EpisodeDeadlineExceeded):
        return HTTPError(408, str(exc), "deadline_exceeded")
    if isinstance(exc, TidalConfigError):
        return HTTPError(400, str(exc))
    if isinstance(exc, TidalEngineError):
        return HTTPError(503, str(exc), "engine_unavailable")
    logger.exception("chat completion failed")
    return HTTPError(500, f"Internal error: {type(exc).__name__}", "server_error")


class _BodyLimit:
    """Refuses bodies over `limit` bytes (413), declared or streamed, before parsing."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]],
                 limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(send)
            return
        seen = 0

        async def limited() -> MutableMapping[str, Any]:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps(HTTPError(
            413, f"Request body is larger than this server's limit of {self.limit} bytes.",
        ).body()).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


def serve(model: TidalChatModel, settings: ServerSettings) -> None:
    """Run the server in the foreground (``tidal-agents serve``)."""
    import uvicorn

    settings.check()
    model.engine.start()  # start-up is not request time
    uvicorn.run(create_app(model, settings), host=settings.host, port=settings.port,
                log_level="warning")
