"""Episode settings are checked in one place, without side effects; one registry
keeps episodes by key."""

from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Any

import pytest

from tidal_agents.allocation import default_grid
from tidal_agents.episode import Episode, EpisodeRegistry, EpisodeSettings, episode_config
from tidal_agents.errors import TidalConfigError
from tidal_agents.integrations.langchain_middleware import TidalEpisodeMiddleware


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"deadline_s": 0}, "deadline_s=0: allowed is a finite number > 0."),
        ({"deadline_s": True}, "deadline_s=True: allowed is a finite number > 0."),
        ({"deadline_s": 5, "lambda_tokens": -1}, "lambda_tokens=-1: allowed is a finite number"),
        ({"deadline_s": 5, "safety_margin_s": 5},
         "safety_margin_s=5: allowed is None (the default) or a number with 0 <= "
         "safety_margin_s < deadline_s (5)."),
        ({"deadline_s": 5, "expected_steps": True}, "expected_steps=True: allowed is an integer"),
        ({"deadline_s": 5, "on_deadline": "wait"},
         "on_deadline='wait': allowed are 'raise', 'fallback'."),
        ({"deadline_s": 5, "fallback_allowance_s": math.nan}, "fallback_allowance_s=nan"),
        ({"deadline_s": 5, "trace_path": 3}, "trace_path=3: allowed is None or a file path"),
        ({"deadline_s": 5, "grid": ("single",)}, "grid=('single',): allowed is None or a"),
    ],
)
def test_settings_errors_name_the_setting_and_what_is_allowed(
    kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(TidalConfigError) as err:
        EpisodeSettings(**kwargs)
    assert str(err.value).startswith(message)


def test_settings_defaults_and_margin() -> None:
    settings = EpisodeSettings(deadline_s=10, grid=list(default_grid()))
    assert settings.margin_s == 0.5 and settings.safety_margin_s is None
    assert isinstance(settings.grid, tuple)
    assert EpisodeSettings(deadline_s=100).margin_s == 1.0
    assert EpisodeSettings(deadline_s=10, safety_margin_s=0).margin_s == 0
    assert EpisodeSettings(deadline_s=10, grid=[]).grid is None
    hash(settings)  # frozen, and hashable once the grid is a tuple


def test_unknown_setting_names_are_config_errors() -> None:
    with pytest.raises(TidalConfigError, match=r"Unknown episode setting\(s\) \['deadline'\]"):
        EpisodeSettings.from_kwargs({"deadline_s": 5, "deadline": 5})
    assert EpisodeSettings.from_kwargs({"deadline_s": 5}).deadline_s == 5


def test_an_episode_from_settings_matches_the_keyword_form(tmp_path: Path) -> None:
    kwargs: dict[str, Any] = {"deadline_s": 12, "lambda_tokens": 0.0, "lambda_latency": 0.2,
                              "safety_margin_s": 0.5, "expected_steps": 4,
                              "on_deadline": "fallback", "fallback_allowance_s": 2.0}
    direct = Episode(**kwargs)
    built = Episode.from_settings(EpisodeSettings(**kwargs), episode_id="e1")
    assert built.id == "e1" and built.settings == direct.settings
    for name in ("deadline_s", "lambda_tokens", "lambda_latency", "safety_margin_s",
                 "expected_steps", "on_deadline", "fallback_allowance_s", "grid"):
        assert getattr(built, name) == getattr(direct, name)
    with pytest.raises(TidalConfigError, match="episode_id=''"):
        Episode.from_settings(EpisodeSettings(deadline_s=5), episode_id="")


def test_settings_from_config_name_the_configurable_key() -> None:
    assert EpisodeSettings.from_config({"thread_id": "t"}) is None
    parsed = EpisodeSettings.from_config({"tidal_deadline_s": 9, "tidal_episode_id": 42})
    assert parsed is not None
    settings, episode_id = parsed
    assert settings.deadline_s == 9 and episode_id == "42"
    with pytest.raises(TidalConfigError, match=r"configurable\['tidal_expected_steps'\]"):
        EpisodeSettings.from_config({"tidal_deadline_s": 9, "tidal_expected_steps": 0})
    with pytest.raises(TidalConfigError, match=r"configurable\['tidal_episode_id'\]"):
        EpisodeSettings.from_config({"tidal_deadline_s": 9, "tidal_episode_id": ""})


def test_episode_config_checks_without_making_a_file(tmp_path: Path) -> None:
    trace = tmp_path / "traces" / "run.jsonl"
    config = episode_config(30, "user-1", trace_path=str(trace))
    assert config["configurable"]["tidal_trace_path"] == str(trace)
    assert not trace.parent.exists()
    with pytest.raises(TidalConfigError, match="trace_path=5"):
        episode_config(30, trace_path=5)  # type: ignore[arg-type]


# ---------------------------------------------------------------- middleware
def test_middleware_checks_settings_without_creating_the_trace_folder(tmp_path: Path) -> None:
    trace = tmp_path / "traces" / "agent.jsonl"
    middleware = TidalEpisodeMiddleware(deadline_s=30, trace_path=str(trace), expected_steps=2)
    assert not trace.parent.exists()
    assert middleware.last_episode is None and len(middleware.episodes) == 0
    assert middleware.settings.expected_steps == 2
    middleware.before_agent({"messages": []}, None)
    episode = middleware.last_episode
    assert episode is not None and episode.expected_steps == 2
    assert episode.settings is middleware.settings


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"deadline_s": -1}, "deadline_s=-1"),
        ({"deadline_s": 30, "expected_steps": 0}, "expected_steps=0"),
        ({"deadline_s": 30, "keep_last": 0}, "keep_last=0"),
        ({"deadline_s": 30, "handle_tool_errors": "yes"}, "handle_tool_errors='yes'"),
        ({"deadline_s": 30, "deadlin_s": 5}, r"Unknown episode setting\(s\) \['deadlin_s'\]"),
    ],
)
def test_bad_middleware_settings_are_config_errors(
    kwargs: dict[str, Any], fragment: str, tmp_path: Path
) -> None:
    with pytest.raises(TidalConfigError, match=fragment):
        TidalEpisodeMiddleware(trace_path=str(tmp_path / "t" / "x.jsonl"), **kwargs)
    assert not (tmp_path / "t").exists()


def test_middleware_keeps_the_last_episodes_only() -> None:
    middleware = TidalEpisodeMiddleware(deadline_s=30, keep_last=2)
    ids = [middleware.before_agent({"messages": []}, None)["tidal_episode_id"]
           for _ in range(3)]
    assert len(middleware.episodes) == 2
    assert middleware.episodes.get(ids[0]) is None
    assert middleware.last_episode is middleware.episodes.get(ids[2])


# ------------------------------------------------------------------ registry
def test_registry_drops_the_oldest_past_its_size() -> None:
    registry = EpisodeRegistry(max_size=2)
    first, second, third = (Episode(deadline_s=5) for _ in range(3))
    assert registry.last is None and registry.get(None) is None
    registry.add(first)
    registry.add(second, key="b")
    assert registry.get(first.id) is first and registry.get("b") is second
    registry.add(third)
    assert len(registry) == 2 and registry.get(first.id) is None
    assert registry.last is third


def test_registry_replaces_finished_episodes_and_keeps_live_ones() -> None:
    registry = EpisodeRegistry(max_size=4)
    made: list[Episode] = []

    def factory() -> Episode:
        made.append(Episode(deadline_s=5))
        return made[-1]

    live = registry.get_or_create("thread-1", factory)
    assert registry.get_or_create("thread-1", factory) is live and len(made) == 1
    assert live is not None
    live.finished = True
    fresh = registry.get_or_create("thread-1", factory)
    assert fresh is not live and fresh is made[1] and registry.get("thread-1") is fresh
    assert registry.get_or_create("none", lambda: None) is None
    assert len(registry) == 1


def test_registry_rereads_move_a_replaced_key_to_newest() -> None:
    registry = EpisodeRegistry(max_size=2)
    a, b, c = (Episode(deadline_s=5) for _ in range(3))
    registry.add(a, key="a")
    registry.add(b, key="b")
    registry.add(c, key="a")  # replacing "a" makes it the newest: "b" goes next
    registry.add(Episode(deadline_s=5), key="d")
    assert registry.get("b") is None and registry.get("a") is c


def test_registry_gives_one_episode_per_key_to_racing_threads() -> None:
    registry = EpisodeRegistry(max_size=8)
    got: list[Episode | None] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        got.append(registry.get_or_create("k", lambda: Episode(deadline_s=5)))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(e) for e in got}) == 1


@pytest.mark.parametrize("size", [0, -1, True, 2.5])
def test_registry_size_is_checked(size: Any) -> None:
    with pytest.raises(TidalConfigError, match="max_size="):
        EpisodeRegistry(size)
