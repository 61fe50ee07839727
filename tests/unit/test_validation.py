"""The shared value checks, and the configs that use them: every bad value is a
TidalConfigError naming the parameter and what is allowed."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest

from tidal_agents.engine.config import EngineConfig
from tidal_agents.errors import TidalConfigError
from tidal_agents.types import StrategyConfig
from tidal_agents.validation import (
    check_bool,
    check_choice,
    check_int,
    check_number,
    check_stop,
    is_finite_number,
)


@pytest.mark.parametrize(
    ("value", "finite"),
    [(0, True), (1.5, True), (10**300, True), (10**400, False), (math.nan, False),
     (math.inf, False), (True, False), ("1", False), (None, False)],
)
def test_is_finite_number(value: Any, finite: bool) -> None:
    assert is_finite_number(value) is finite


@pytest.mark.parametrize(
    ("kwargs", "value", "message"),
    [
        ({"lo": 0}, -1, "x=-1: allowed is a finite number >= 0."),
        ({"lo": 0, "lo_open": True}, 0, "x=0: allowed is a finite number > 0."),
        ({"hi": 1, "hi_open": True}, 1, "x=1: allowed is a finite number < 1."),
        ({"lo": 0, "hi": 1, "hi_open": True}, 2.0,
         "x=2.0: allowed is 0 <= x < 1 (a finite number)."),
        ({}, math.nan, "x=nan: allowed is a finite number."),
        ({"lo": 0}, True, "x=True: allowed is a finite number >= 0."),
        ({"lo": 0, "allow_none": True}, "3", "x='3': allowed is None or a finite number >= 0."),
    ],
)
def test_check_number_names_the_value_and_the_range(
    kwargs: dict[str, Any], value: Any, message: str
) -> None:
    with pytest.raises(TidalConfigError) as err:
        check_number("x", value, **kwargs)
    assert str(err.value) == message


def test_check_number_accepts_values_in_range() -> None:
    check_number("x", 0, lo=0)
    check_number("x", 1, lo=0, hi=1)
    check_number("x", None, lo=0, allow_none=True)
    check_number("x", 10**300, lo=0, lo_open=True)


@pytest.mark.parametrize(
    ("args", "value", "message"),
    [
        ((1, 1024), 0, "n=0: allowed is 1 <= n <= 1024 (an integer)."),
        ((0, 2**63 - 1), -1, f"n=-1: allowed is 0 <= n <= {2**63 - 1} (an integer)."),
        ((1, None), True, "n=True: allowed is an integer >= 1."),
        ((1, None), 2.0, "n=2.0: allowed is an integer >= 1."),
    ],
)
def test_check_int_rejects_bools_floats_and_out_of_range(
    args: tuple[int, int | None], value: Any, message: str
) -> None:
    with pytest.raises(TidalConfigError) as err:
        check_int("n", value, *args)
    assert str(err.value) == message
    check_int("n", None, *args, allow_none=True)
    check_int("n", 1, *args)


def test_check_choice_and_bool() -> None:
    check_choice("kind", "a", ("a", "b"))
    with pytest.raises(TidalConfigError, match=r"^kind='c': allowed are 'a', 'b'\.$"):
        check_choice("kind", "c", ("a", "b"))
    with pytest.raises(TidalConfigError, match="allowed are 1, 2"):
        check_choice("k", True, (1, 2))  # True == 1, but it is no choice here
    with pytest.raises(TidalConfigError, match="k=\\['a'\\]"):
        check_choice("k", ["a"], ("a",))  # unhashable values are refused, not a TypeError
    check_bool("flag", False)
    with pytest.raises(TidalConfigError, match="flag=1: allowed is True or False"):
        check_bool("flag", 1)


def test_check_stop() -> None:
    assert check_stop("x") == ("x",)
    assert check_stop(["a", "b"]) == ("a", "b")
    for bad in ("", [""], [1], 5, None):
        with pytest.raises(TidalConfigError, match="stop=.*allowed is a string or a list"):
            check_stop(bad)


# ------------------------------------------------------------ StrategyConfig
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"strategy": "bogus"}, "strategy='bogus': allowed are 'single', 'best_of_n'"),
        ({"strategy": "best_of_n", "selector": "bogus"},
         "selector='bogus': allowed are 'first', 'majority', 'confidence'"),
        ({"strategy": "single", "temperature": math.nan}, "temperature=nan: allowed is a finite"),
        ({"strategy": "single", "temperature": -3},
         "temperature=-3: allowed is a finite number >= 0"),
        ({"strategy": "single", "temperature": math.inf}, "temperature=inf"),
        ({"strategy": "single", "temperature": "0.7"}, "temperature='0.7'"),
        ({"strategy": "best_of_n", "n": True}, "n=True: allowed is an integer >= 1"),
        ({"strategy": "best_of_n", "n": 0}, "n=0: allowed is an integer >= 1"),
        ({"strategy": "best_of_n", "n": 2.0}, "n=2.0"),
        ({"strategy": "single", "n": 4}, "n=4: allowed is 1 with strategy 'single'"),
        ({"strategy": "single", "max_tokens": True}, "max_tokens=True: allowed is an integer"),
        ({"strategy": "single", "max_tokens": 0}, "max_tokens=0"),
        ({"strategy": "best_of_n", "n": 4, "adaptive": 1}, "adaptive=1: allowed is True or False"),
        ({"strategy": "beam", "n": 2, "expansions": False}, "expansions=False"),
        ({"strategy": "beam", "n": 2, "expansions": 0}, "expansions=0"),
    ],
)
def test_bad_strategy_configs_name_the_field(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(TidalConfigError) as err:
        StrategyConfig(**kwargs)
    assert str(err.value).startswith(message)


def test_negative_temperature_is_no_longer_greedy() -> None:
    with pytest.raises(TidalConfigError, match="temperature=-3"):
        StrategyConfig("single", temperature=-3)
    assert StrategyConfig("single", temperature=0.0).name == "greedy"
    assert StrategyConfig("single", temperature=0).name == "greedy"


def test_replace_is_checked_too() -> None:
    config = StrategyConfig("best_of_n", n=4, selector="majority")
    assert dataclasses.replace(config, n=8).name == "bo8-majority"
    assert dataclasses.asdict(config)["selector"] == "majority"
    with pytest.raises(TidalConfigError, match="selector='vote'"):
        dataclasses.replace(config, selector="vote")  # type: ignore[arg-type]


# ------------------------------------------------------------- EngineConfig
@pytest.mark.parametrize(
    ("kwargs", "field", "fragment"),
    [
        ({"seed": True}, "seed", "valid integer"),
        ({"seed": -1}, "seed", "greater than or equal to 0"),
        ({"max_model_len": "4096"}, "max_model_len", "valid integer"),
        ({"kv_cache_space_gib": 2.5}, "kv_cache_space_gib", "valid integer"),
        ({"enable_prefix_caching": "yes"}, "enable_prefix_caching", "valid boolean"),
        ({"enforce_eager": 1}, "enforce_eager", "valid boolean"),
        ({"gpu_memory_utilization": math.nan}, "gpu_memory_utilization", "finite number"),
        ({"restart_backoff_s": math.inf}, "restart_backoff_s", "finite number"),
        ({"log_level": "LOUD"}, "log_level", "'DEBUG', 'INFO', 'WARNING', 'ERROR' or"),
        ({"model": ""}, "model", "at least 1 character"),
        ({"cpu_threads_bind": "cores 0 to 3"}, "cpu_threads_bind", "allowed is None, 'auto'"),
        ({"tensor_parallel_size": 0}, "tensor_parallel_size", "greater than or equal to 1"),
    ],
)
def test_engine_config_errors_name_the_field(
    kwargs: dict[str, Any], field: str, fragment: str
) -> None:
    with pytest.raises(TidalConfigError) as err:
        EngineConfig(**kwargs)
    message = str(err.value)
    assert message.startswith("EngineConfig: 1 invalid setting(s)\n")
    assert f"\n{field}\n" in message and fragment in message
    assert repr(next(iter(kwargs.values()))) in message  # the value that was given


def test_engine_config_accepts_good_values() -> None:
    config = EngineConfig(seed=7, gpu_memory_utilization=1, cpu_threads_bind="0-3,6|7",
                          log_level="INFO", restart_backoff_s=0)
    assert config.gpu_memory_utilization == 1.0 and config.cpu_threads_bind == "0-3,6|7"
    for bind in ("auto", "nobind", "0", "0-1"):
        EngineConfig(cpu_threads_bind=bind)
