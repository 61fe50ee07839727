"""The installed packages: every package folder ships, and the integrations install
under tidal_agents so the distribution claims no other top-level name."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _setuptools_config() -> dict[str, object]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        config: dict[str, object] = tomllib.load(f)["tool"]["setuptools"]
    return config


def _package_folders(folder: Path, name: str) -> set[str]:
    found = {name}
    for sub in folder.iterdir():
        if sub.is_dir() and sub.name.isidentifier() and not sub.name.startswith("__"):
            found |= _package_folders(sub, f"{name}.{sub.name}")
    return found


def test_every_package_folder_is_listed_and_only_tidal_agents_is_top_level() -> None:
    config = _setuptools_config()
    listed = set(config["packages"])  # type: ignore[call-overload]
    on_disk = _package_folders(ROOT / "tidal_agents", "tidal_agents") | _package_folders(
        ROOT / "integrations", "tidal_agents.integrations"
    )
    assert listed == on_disk, "pyproject.toml [tool.setuptools] packages is out of date"
    assert {name.split(".")[0] for name in listed} == {"tidal_agents"}
    assert config["package-dir"] == {"tidal_agents.integrations": "integrations"}


def test_integrations_import_under_tidal_agents() -> None:
    from tidal_agents.integrations.langchain_middleware import TidalEpisodeMiddleware

    assert TidalEpisodeMiddleware.__module__ == "tidal_agents.integrations.langchain_middleware"
