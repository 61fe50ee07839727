"""Shared fixtures. The real engine starts once per test session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tidal_agents.engine import LocalVLLMEngine, get_engine


@pytest.fixture(scope="session")
def engine() -> Iterator[LocalVLLMEngine]:
    """The process-wide in-process vLLM engine on the embedded model."""
    eng = get_engine()
    yield eng


@pytest.fixture(scope="session")
def chat_prompt(engine: LocalVLLMEngine) -> str:
    return engine.apply_chat_template([{"role": "user", "content": "What is 2+3?"}])
