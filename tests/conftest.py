"""Shared fixtures. Each real engine starts once per test session.

Two backends drive the same integration tests: the in-process engine and a
fleet of two real ``vllm serve`` processes on loopback (the CPU build, the
embedded model), reached through the remote backend.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tidal_agents.engine import Engine, LocalVLLMEngine, get_engine
from tidal_agents.engine.remote import RemoteVLLMEngine
from tidal_agents.engine.vllm_server import VLLMServer, start_servers


@pytest.fixture(scope="session")
def engine() -> Iterator[LocalVLLMEngine]:
    """The process-wide in-process vLLM engine on the embedded model."""
    eng = get_engine()
    yield eng


@pytest.fixture(scope="session")
def chat_prompt(engine: LocalVLLMEngine) -> str:
    return engine.apply_chat_template([{"role": "user", "content": "What is 2+3?"}])


@pytest.fixture(scope="session")
def vllm_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[VLLMServer]]:
    servers = start_servers(2, tmp_path_factory.mktemp("vllm-serve"))
    yield servers
    for s in servers:
        s.stop()


@pytest.fixture(scope="session")
def remote_engine(vllm_servers: list[VLLMServer]) -> Iterator[RemoteVLLMEngine]:
    """The remote backend over both servers."""
    eng = RemoteVLLMEngine([s.url for s in vllm_servers]).start()
    yield eng
    eng.shutdown()


@pytest.fixture(scope="session", params=["local", "remote"])
def backend(request: pytest.FixtureRequest) -> Engine:
    """Each engine integration test runs once per backend."""
    name = "engine" if request.param == "local" else "remote_engine"
    eng: Engine = request.getfixturevalue(name)
    return eng
