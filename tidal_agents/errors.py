"""Typed errors. Each names the bad value and what is allowed."""

from __future__ import annotations


class TidalError(Exception):
    """Base class of every error raised by tidal_agents."""


class TidalConfigError(TidalError, ValueError):
    """A configuration value is invalid (raised before any generation starts)."""


class TidalModelError(TidalError):
    """The model could not be found, prepared or loaded."""


class TidalEngineError(TidalError):
    """The vLLM engine failed to start or to serve a request."""


class EpisodeDeadlineExceeded(TidalError, TimeoutError):
    """The episode's wall-clock deadline has passed before a step could start."""
