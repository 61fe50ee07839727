"""Engine configuration: a frozen, validated object with documented defaults."""

from __future__ import annotations

import os
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tidal_agents.errors import TidalConfigError
from tidal_agents.validation import config_error

Dtype = Literal["auto", "bfloat16", "float16", "float32"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
#: what VLLM_CPU_OMP_THREADS_BIND takes: "auto", "nobind", or core ranges ("0-3,6"),
#: one group per rank separated by "|"
_CORE_LIST = r"\d+(-\d+)?(,\d+(-\d+)?)*"
_CPU_BIND = re.compile(rf"auto|nobind|{_CORE_LIST}(\|{_CORE_LIST})*")


def on_cpu() -> bool:
    """True when vLLM will run on the CPU build (no CUDA device visible)."""
    try:
        import torch

        return not torch.cuda.is_available()
    except ImportError:  # pragma: no cover - torch comes with vLLM
        return True


class EngineConfig(BaseModel):
    """Arguments of the in-process vLLM engine.

    ``None`` means "pick for this hardware": on CPU the settings measured in
    docs/design-notes.md, 'CPU engine settings' (eager mode: same decode speed,
    4x faster start; bfloat16; all cores; 1 GiB of KV cache; chunked prefill off,
    which keeps per-request seeds safe: 'Chunked prefill and seeds'), on GPU
    vLLM's own defaults.
    Anything else vLLM's ``AsyncEngineArgs`` accepts goes in ``engine_args``.

    Every field is checked when the object is built (strictly: no bool for an
    int, no string for a number, no NaN or infinity); a bad value is a
    TidalConfigError naming the field and what it allows.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)

    model: str | None = Field(
        default=None, min_length=1,
        description="HF folder or name; None = the embedded SmolLM2-135M-Instruct",
    )
    dtype: Dtype = "auto"
    max_model_len: int | None = Field(default=None, ge=16)
    enforce_eager: bool | None = None
    enable_prefix_caching: bool = True
    kv_cache_space_gib: int = Field(default=1, ge=1, description="CPU only, GiB")
    cpu_threads_bind: str | None = Field(default=None, description="CPU only, e.g. '0-1'")
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1)
    tensor_parallel_size: int = Field(default=1, ge=1)
    pipeline_parallel_size: int = Field(default=1, ge=1)
    distributed_executor_backend: Literal["mp", "ray", "uni"] | None = None
    max_num_seqs: int | None = Field(default=None, ge=1)
    seed: int = Field(default=0, ge=0, le=2**32 - 1, description="NumPy's seed range")
    max_restarts: int = Field(default=1, ge=0, description="restarts after the engine "
                              "process dies; past them requests fail with TidalEngineError")
    restart_backoff_s: float = Field(default=1.0, ge=0, le=60)
    log_level: LogLevel = "WARNING"
    warm_up: bool = True
    """Run a few short requests at start-up (greedy, sampled with log-probs, under a
    grammar) so the first request of an episode does not pay vLLM's one-time costs."""
    engine_args: dict[str, Any] = Field(default_factory=dict)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise config_error("EngineConfig", exc) from None

    @field_validator("cpu_threads_bind")
    @classmethod
    def _cpu_bind(cls, value: str | None) -> str | None:
        if value is not None and not _CPU_BIND.fullmatch(value):
            raise ValueError(
                "allowed is None, 'auto', 'nobind' or core ranges such as '0-3,6' (one "
                "group per rank, separated by '|')"
            )
        return value

    @field_validator("engine_args")
    @classmethod
    def _known_engine_args(cls, value: dict[str, Any]) -> dict[str, Any]:
        if not value:
            return value
        from dataclasses import fields

        from vllm.engine.arg_utils import AsyncEngineArgs

        known = {f.name for f in fields(AsyncEngineArgs)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise TidalConfigError(
                f"Unknown vLLM engine argument(s) {unknown}; allowed are the fields of "
                "vllm.engine.arg_utils.AsyncEngineArgs."
            )
        return value

    def vllm_engine_args(self, model_path: str) -> dict[str, Any]:
        """The keyword arguments for ``AsyncEngineArgs`` on this hardware."""
        cpu = on_cpu()
        args: dict[str, Any] = {
            "model": model_path,
            "dtype": ("bfloat16" if cpu else "auto") if self.dtype == "auto" else self.dtype,
            "enable_prefix_caching": self.enable_prefix_caching,
            "enforce_eager": cpu if self.enforce_eager is None else self.enforce_eager,
            "tensor_parallel_size": self.tensor_parallel_size,
            "pipeline_parallel_size": self.pipeline_parallel_size,
            "seed": self.seed,
            "disable_log_stats": True,
        }
        if self.max_model_len is not None:
            args["max_model_len"] = self.max_model_len
        if self.max_num_seqs is not None:
            args["max_num_seqs"] = self.max_num_seqs
        if self.gpu_memory_utilization is not None:
            args["gpu_memory_utilization"] = self.gpu_memory_utilization
        if self.distributed_executor_backend is not None:
            args["distributed_executor_backend"] = self.distributed_executor_backend
        if "structured_outputs_config" not in self.engine_args:
            from vllm.config import StructuredOutputsConfig

            # Compact JSON: no token is spent on indentation, and a small model
            # cannot wander off into endless whitespace inside a grammar.
            args["structured_outputs_config"] = StructuredOutputsConfig(
                backend="xgrammar", disable_any_whitespace=True
            )
        if cpu:
            # A seeded request that is only partly prefilled in a chunked batch
            # crashes the CPU engine (docs/design-notes.md, 'Chunked prefill and
            # seeds'): prefill whole prompts.
            args["enable_chunked_prefill"] = False
        args.update(self.engine_args)
        return args

    def apply_environment(self) -> None:
        """Set vLLM's CPU environment defaults (never overriding the user's)."""
        if on_cpu():
            cores = sorted(os.sched_getaffinity(0))  # the cores this process may use
            bind = self.cpu_threads_bind or _core_ranges(cores)
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", bind)
            os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.kv_cache_space_gib))
        os.environ.setdefault("VLLM_USE_AOT_COMPILE", "0")  # its cache breaks on re-runs
        os.environ.setdefault("VLLM_LOGGING_LEVEL", self.log_level)
        # Library logs belong on stderr: stdout carries results (`bench --json`).
        os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _core_ranges(cores: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5' (the format of VLLM_CPU_OMP_THREADS_BIND)."""
    parts: list[str] = []
    start = prev = cores[0]
    for c in [*cores[1:], None]:
        if c is not None and c == prev + 1:
            prev = c
            continue
        parts.append(f"{start}-{prev}" if prev != start else str(start))
        if c is not None:
            start = prev = c
    return ",".join(parts)
