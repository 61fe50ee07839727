"""Validation of engine requests and configuration (no engine needed)."""

from __future__ import annotations

import math

import pytest

from tidal_agents.engine import EngineConfig, GenerationRequest, GuidedDecoding
from tidal_agents.engine.config import _core_ranges
from tidal_agents.errors import TidalConfigError


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"prompt": ""}, "prompt is empty"),
        ({"prompt": ()}, "non-empty sequence"),
        ({"prompt": 3}, "prompt must be str"),
        ({"n": 0}, "n=0"),
        ({"n": 1.5}, "n=1.5"),
        ({"max_tokens": 0}, "max_tokens=0"),
        ({"temperature": -1}, "temperature=-1"),
        ({"temperature": math.nan}, "temperature=nan"),
        ({"top_p": 0}, "top_p=0"),
        ({"logprobs": 21}, "logprobs=21"),
        ({"stop": ("",)}, "stop="),
        ({"timeout_s": 0}, "timeout_s=0"),
        ({"seed": -1}, "seed=-1"),
    ],
)
def test_request_validation(kwargs: dict, fragment: str) -> None:
    with pytest.raises(TidalConfigError, match=fragment.replace("(", r"\(")):
        GenerationRequest(**{"prompt": "hi", **kwargs})


def test_request_normalises_stop_and_tokens() -> None:
    r = GenerationRequest(prompt=[1, 2, 3], stop="x")  # type: ignore[arg-type]
    assert r.prompt == (1, 2, 3)
    assert r.stop == ("x",)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({}, "exactly one"),
        ({"regex": "a", "choice": ("a",)}, "exactly one"),
        ({"json_schema": {"type": "nonsense"}}, "Malformed JSON schema"),
        ({"json_schema": "not a dict"}, "must be a dict"),
        ({"json_schema": {"type": "object", "properties": {"a": {"minimum": "x"}}}}, "Malformed"),
        ({"choice": ()}, "non-empty tuple"),
    ],
)
def test_guided_validation(kwargs: dict, fragment: str) -> None:
    with pytest.raises(TidalConfigError, match=fragment):
        GuidedDecoding(**kwargs)


@pytest.mark.slow  # imports vLLM to list its engine arguments
def test_engine_config_rejects_unknown_engine_args() -> None:
    with pytest.raises(ValueError, match="Unknown vLLM engine argument"):
        EngineConfig(engine_args={"no_such_arg": 1})


def test_engine_config_rejects_unknown_fields() -> None:
    with pytest.raises(ValueError):
        EngineConfig(dtype="float8")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        EngineConfig(unknown_field=1)  # type: ignore[call-arg]


@pytest.mark.slow  # imports vLLM
def test_engine_args_on_cpu_defaults() -> None:
    args = EngineConfig(engine_args={"max_num_seqs": 64}).vllm_engine_args("/m")
    assert args["model"] == "/m"
    assert args["dtype"] == "bfloat16"
    assert args["enforce_eager"] is True
    assert args["enable_chunked_prefill"] is False
    assert args["max_num_seqs"] == 64


def test_core_ranges() -> None:
    assert _core_ranges([0, 1]) == "0-1"
    assert _core_ranges([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    assert _core_ranges([3]) == "3"
