"""tidal_agents: latency- and token-aware test-time compute for LangChain agents."""

from tidal_agents.errors import (
    EpisodeDeadlineExceeded,
    TidalConfigError,
    TidalEngineError,
    TidalError,
    TidalModelError,
)

__version__ = "0.1.0"

__all__ = [
    "EpisodeDeadlineExceeded",
    "TidalConfigError",
    "TidalEngineError",
    "TidalError",
    "TidalModelError",
    "__version__",
]
