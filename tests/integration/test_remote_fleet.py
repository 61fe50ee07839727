"""A fleet of real `vllm serve` processes: spreading, failover mid-request, episodes
that survive a dead replica."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tidal_agents import TidalChatModel
from tidal_agents.engine import GenerationRequest
from tidal_agents.engine.remote import RemoteVLLMEngine
from tidal_agents.engine.vllm_server import VLLMServer, start_servers
from tidal_agents.errors import TidalConfigError, TidalEngineError
from tidal_agents.strategies import StrategyConfig

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def victims(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[VLLMServer]]:
    """Two extra servers that the tests kill."""
    servers = start_servers(2, Path(tmp_path_factory.mktemp("victims")))
    yield servers
    for s in servers:
        s.stop()


async def test_concurrent_requests_spread_over_both_replicas(
    remote_engine: RemoteVLLMEngine, chat_prompt: str
) -> None:
    before = {r.url: r.served for r in remote_engine.replicas}
    reqs = [
        GenerationRequest(prompt=chat_prompt, n=2, temperature=0.8, max_tokens=16, ignore_eos=True)
        for _ in range(8)
    ]
    results = await asyncio.gather(*(remote_engine.generate(r) for r in reqs))
    assert all(r.generated_tokens == 32 for r in results)
    served = {r.url: r.served - before[r.url] for r in remote_engine.replicas}
    assert sum(served.values()) == 8
    assert all(count >= 2 for count in served.values()), served
    assert {r.extra["replica"] for r in results} == set(remote_engine.urls)


async def test_killing_a_replica_mid_request_fails_over(
    victims: list[VLLMServer], vllm_servers: list[VLLMServer], chat_prompt: str
) -> None:
    victim, survivor = victims[0], vllm_servers[0]
    eng = RemoteVLLMEngine([victim.url, survivor.url]).start()
    try:
        streamed: list[str] = []
        first = threading.Event()

        def on_token(index: int, text: str) -> None:
            streamed.append(text)
            first.set()

        # Equal load and no history: the first replica listed takes the request.
        task = asyncio.create_task(eng.generate(
            GenerationRequest(prompt=chat_prompt, max_tokens=120, ignore_eos=True), on_token
        ))
        await asyncio.to_thread(first.wait, 60)
        await asyncio.to_thread(victim.kill)
        result = await task
        assert result.extra["attempts"] == [victim.url, survivor.url]
        assert result.generated_tokens == 120 and not result.timed_out
        # Greedy: the retry regenerates the same text, streamed exactly once.
        assert "".join(streamed) == result.samples[0].text
        assert eng.replicas[0].healthy is False
        # The dead replica is skipped from now on.
        again = await eng.generate(GenerationRequest(prompt=chat_prompt, max_tokens=4))
        assert again.extra["attempts"] == [survivor.url]
    finally:
        eng.shutdown()


async def test_episode_survives_a_replica_dying_mid_step(
    victims: list[VLLMServer], vllm_servers: list[VLLMServer], tmp_path: Path
) -> None:
    victim, survivor = victims[1], vllm_servers[1]
    model = TidalChatModel(
        base_url=[victim.url, survivor.url],
        strategy=StrategyConfig("single", max_tokens=48),
        max_tokens=48,
    )
    trace = tmp_path / "trace.jsonl"
    with model.episode(deadline_s=120, trace_path=str(trace)) as ep:
        chunks = []
        async for chunk in model.astream("Tell me about the sea."):
            if not chunks:
                await asyncio.to_thread(victim.kill)
            chunks.append(chunk)
        answer = await model.ainvoke("And about the moon?")
    assert answer.content
    records = ep.trace.records
    assert len(records) == 2 and all(r.error is None for r in records)
    assert records[0].spent is not None and records[0].spent.engine_retries == 1
    assert records[0].spent.servers == (survivor.url,)
    assert records[1].spent is not None and records[1].spent.servers == (survivor.url,)
    assert len(trace.read_text().splitlines()) == 2


def test_all_replicas_down_is_a_clear_error() -> None:
    with pytest.raises(TidalEngineError, match="No vLLM replica answered"):
        RemoteVLLMEngine(["http://127.0.0.1:9", "http://127.0.0.1:10"]).start()


def test_bad_urls_are_config_errors() -> None:
    for bad in ([], ["localhost:8000"], ["http://a", "http://a"]):
        with pytest.raises(TidalConfigError, match="base_urls"):
            RemoteVLLMEngine(bad)
    with pytest.raises(ValueError, match="base_url='ftp://x': pass one or more http"):
        TidalChatModel(base_url="ftp://x")
