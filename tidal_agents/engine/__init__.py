"""vLLM backends behind one small typed interface."""

from tidal_agents.engine.config import EngineConfig
from tidal_agents.engine.local import LocalVLLMEngine, get_engine
from tidal_agents.engine.types import (
    Engine,
    GenerationRequest,
    GenerationResult,
    GuidedDecoding,
    Sample,
)

__all__ = [
    "Engine",
    "EngineConfig",
    "GenerationRequest",
    "GenerationResult",
    "GuidedDecoding",
    "LocalVLLMEngine",
    "Sample",
    "get_engine",
]
