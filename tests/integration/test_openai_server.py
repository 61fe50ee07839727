"""The OpenAI-compatible front, driven by the official `openai` client, on the real engine."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
from fakes import ADD_TOOL
from pydantic import SecretStr

from tidal_agents import TidalChatModel
from tidal_agents.engine import LocalVLLMEngine
from tidal_agents.engine.vllm_server import free_port
from tidal_agents.errors import TidalConfigError
from tidal_agents.integrations.openai_server import ServerSettings, create_app

pytestmark = pytest.mark.engine

KEY = "test-key-123"


@pytest.fixture(scope="module")
def server_url(engine: LocalVLLMEngine) -> Iterator[str]:
    import uvicorn

    settings = ServerSettings(api_key=SecretStr(KEY), max_tokens_limit=64,
                              max_request_bytes=20_000)
    app = create_app(TidalChatModel(max_tokens=32), settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(100):
        if server.started:
            break
        time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def client(server_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server_url}/v1", api_key=KEY, max_retries=0)


def test_tool_call_with_decision_record(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(
        model="tidal",
        messages=[{"role": "user", "content": "What is 12 plus 30? Use the tool."}],
        tools=[ADD_TOOL],  # type: ignore[list-item]
        tool_choice={"type": "function", "function": {"name": "add"}},
        max_tokens=48,
    )
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "add"  # type: ignore[union-attr]
    assert set(json.loads(call.function.arguments)) == {"a", "b"}  # type: ignore[union-attr]
    assert resp.usage is not None and resp.usage.completion_tokens > 0
    tidal = resp.model_extra["tidal"]  # type: ignore[index]
    step = tidal["step"]
    assert step["decision"]["chosen"] == tidal["strategy"] == step["strategy"]
    assert step["spent"]["generated_tokens"] == resp.usage.completion_tokens
    assert step["finish"] == "tool_call"


def test_tool_result_turn_and_deadline_fields(client: openai.OpenAI) -> None:
    messages = [
        {"role": "user", "content": "What is 12 plus 30?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "add", "arguments": '{"a": 12, "b": 30}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
    ]
    resp = client.chat.completions.create(
        model="tidal", messages=messages, tools=[ADD_TOOL], max_tokens=32,  # type: ignore[arg-type]
        extra_body={"tidal_deadline_s": 30, "tidal_episode_id": "ep-http-1"},
    )
    tidal = resp.model_extra["tidal"]  # type: ignore[index]
    assert tidal["episode_id"] == "ep-http-1"
    assert tidal["allowance_s"] is not None and 0 < tidal["allowance_s"] <= 30
    # a second request of the same episode continues it
    again = client.chat.completions.create(
        model="tidal", messages=[{"role": "user", "content": "Thanks!"}], max_tokens=8,
        extra_headers={"X-Tidal-Deadline-S": "30", "X-Tidal-Episode-Id": "ep-http-1"},
    )
    assert again.model_extra["tidal"]["step_index"] == 1  # type: ignore[index]


def test_streaming_text_and_final_record(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="tidal", messages=[{"role": "user", "content": "Say hello."}], max_tokens=16,
        stream=True,
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    last = chunks[-1]
    assert last.choices[0].finish_reason in ("stop", "length")
    assert last.model_extra["tidal"]["step"]["spent"]["generated_tokens"] > 0  # type: ignore[index]


def test_json_schema_response_format(client: openai.OpenAI) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}},
              "required": ["city"], "additionalProperties": False}
    resp = client.chat.completions.create(
        model="tidal", messages=[{"role": "user", "content": "Capital of France as JSON."}],
        max_tokens=32,
        response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}},
    )
    assert set(json.loads(resp.choices[0].message.content or "")) == {"city"}


def test_api_key_required(server_url: str) -> None:
    bad = openai.OpenAI(base_url=f"{server_url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="tidal", messages=[{"role": "user", "content": "x"}])
    assert httpx.get(f"{server_url}/health").status_code == 200


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"max_tokens": 5000}, "above this server's limit of 64"),
        ({"n": 2}, "n: Input should be less than or equal to 1"),
        ({"extra_body": {"tidal_deadline_s": -1}}, "tidal_deadline_s"),
        ({"extra_headers": {"X-Tidal-Deadline-S": "soon"}}, "X-Tidal-Deadline-S='soon'"),
        ({"extra_body": {"tidal_episode_id": "e"}}, "need tidal_deadline_s"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "properties": {"x": {"type": "nonsense"}}}}}]}, "tools"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
         "response_format"),
    ],
)
def test_bad_requests_get_clear_400s(client: openai.OpenAI, kwargs: dict, fragment: str) -> None:
    with pytest.raises(openai.BadRequestError, match=fragment):
        client.chat.completions.create(
            model="tidal", messages=[{"role": "user", "content": "hi"}], **kwargs
        )
    ok = client.chat.completions.create(
        model="tidal", messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    assert ok.choices[0].message.content is not None


def test_oversized_and_malformed_bodies(server_url: str) -> None:
    headers = {"Authorization": f"Bearer {KEY}", "content-type": "application/json"}
    big = {"model": "tidal", "messages": [{"role": "user", "content": "x" * 50_000}]}
    resp = httpx.post(f"{server_url}/v1/chat/completions", json=big, headers=headers)
    assert resp.status_code == 413 and "limit of 20000 bytes" in resp.json()["error"]["message"]
    resp = httpx.post(f"{server_url}/v1/chat/completions", content=b"{not json",
                      headers=headers)
    assert resp.status_code == 400 and "not valid JSON" in resp.json()["error"]["message"]
    resp = httpx.post(f"{server_url}/v1/chat/completions", headers=headers,
                      json={"messages": [{"role": "wizard", "content": "x"}]})
    assert resp.status_code == 400 and "messages" in resp.json()["error"]["message"]


def test_settings_refuse_exposure_without_consent() -> None:
    with pytest.raises(TidalConfigError, match="not loopback"):
        ServerSettings(host="0.0.0.0").check()
    with pytest.raises(TidalConfigError, match="needs an API key"):
        ServerSettings(host="0.0.0.0", allow_remote=True).check()
    ServerSettings(host="0.0.0.0", allow_remote=True, api_key=SecretStr("k")).check()
