"""Where tidal_agents keeps its files: `$TIDAL_AGENTS_HOME`, else XDG cache."""

from __future__ import annotations

import os
from pathlib import Path


def home_dir() -> Path:
    """The root of tidal_agents' user files (models, calibrations, traces)."""
    explicit = os.environ.get("TIDAL_AGENTS_HOME")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "tidal_agents"


def models_dir() -> Path:
    return home_dir() / "models"


def calibration_dir() -> Path:
    return home_dir() / "calibration"
