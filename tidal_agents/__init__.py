"""tidal_agents: latency- and token-aware test-time compute for LangChain agents."""

from typing import TYPE_CHECKING

from tidal_agents.errors import (
    EpisodeDeadlineExceeded,
    TidalConfigError,
    TidalEngineError,
    TidalError,
    TidalModelError,
)

__version__ = "0.1.0"

if TYPE_CHECKING:
    from tidal_agents.chat_model import TidalChatModel
    from tidal_agents.episode import Episode, episode_config


def __getattr__(name: str) -> object:
    # Lazy: importing the package must not pull in LangChain and the allocator.
    if name == "TidalChatModel":
        from tidal_agents.chat_model import TidalChatModel

        return TidalChatModel
    if name == "Episode":
        from tidal_agents.episode import Episode

        return Episode
    if name == "episode_config":
        from tidal_agents.episode import episode_config

        return episode_config
    raise AttributeError(name)


__all__ = [
    "Episode",
    "EpisodeDeadlineExceeded",
    "TidalConfigError",
    "TidalEngineError",
    "TidalError",
    "TidalChatModel",
    "TidalModelError",
    "__version__",
    "episode_config",
]
