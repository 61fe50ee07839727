"""LangChain's own standard test suites: the unit suite needs no engine, the
integration suite runs against the real local engine.

Feature flags that are off are off because the feature does not exist in this
model (text-only SmolLM2 / any text-only HF model), each with the reason.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from tidal_agents import TidalChatModel
from tidal_agents.strategies import StrategyConfig

# Small budgets: the suites make ~80 calls on a 2-core CPU; 64 tokens leave room
# for a compact JSON joke.
_PARAMS: dict[str, Any] = {"max_tokens": 64}
_STANDARD = {"temperature": 0, "max_tokens": 64, "timeout": 60, "stop": [], "max_retries": 2}
# The integration suite checks LangChain behaviour, and some of its assertions
# need the right answer from a 135M model (`magic_function(3)` -> input 3). A
# vote over T=0.7 samples gets that wrong now and then, so the suite runs
# greedy. Allocation and voting are tested in tests/integration.
_GREEDY = {**_STANDARD, "strategy": StrategyConfig("single", temperature=0.0, max_tokens=64)}


class TestTidalChatModelUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[TidalChatModel]:
        return TidalChatModel

    @property
    def standard_chat_model_params(self) -> dict[str, Any]:
        return _STANDARD


@pytest.mark.engine
class TestTidalChatModelIntegration(ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[TidalChatModel]:
        return TidalChatModel

    @property
    def standard_chat_model_params(self) -> dict[str, Any]:
        return _GREEDY

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def has_structured_output(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def supported_usage_metadata_details(self) -> dict[str, list[Any]]:
        return {"invoke": ["cache_read_input"], "stream": ["cache_read_input"]}

    # Text-only models: these input kinds do not exist here.
    @property
    def supports_image_inputs(self) -> bool:
        return False

    @property
    def supports_image_urls(self) -> bool:
        return False

    @property
    def supports_pdf_inputs(self) -> bool:
        return False

    @property
    def supports_audio_inputs(self) -> bool:
        return False

    @property
    def supports_video_inputs(self) -> bool:
        return False

    @property
    def supports_image_tool_message(self) -> bool:
        return False

    @property
    def supports_pdf_tool_message(self) -> bool:
        return False

    @property
    def supports_anthropic_inputs(self) -> bool:
        # Anthropic-format content blocks (tool_use in content) are a provider format.
        return False


def _cache_read_invoke(model: TidalChatModel) -> Any:
    # A long shared system prompt: the second call reads its prefix from vLLM's cache.
    system = "You are a terse assistant. Answer in one short sentence. " * 40
    model.invoke([("system", system), ("user", "Say hello.")])
    return model.invoke([("system", system), ("user", "Say goodbye.")])


def _invoke_with_cache_read_input(self: Any, *, stream: bool = False) -> Any:
    model = TidalChatModel(**_PARAMS)
    if not stream:
        return _cache_read_invoke(model)
    _cache_read_invoke(model)
    system = "You are a terse assistant. Answer in one short sentence. " * 40
    full = None
    for chunk in model.stream([("system", system), ("user", "Say thanks.")]):
        full = chunk if full is None else full + chunk
    return full


TestTidalChatModelIntegration.invoke_with_cache_read_input = _invoke_with_cache_read_input  # type: ignore[method-assign]
