"""Predicted tokens and latency of a decoding configuration on this backend.

The paper used per-configuration training means; we need per-step predictions
(prompt length and prefix-cache hits vary along an agent episode) and they must
follow the machine's load, so the model is parametric and learns online.

Latency of one strategy run::

    latency = calls * overhead_s
            + prefill_s_per_token * prefill_tokens
            + decode_step_s * decode_steps        # one batched forward per step
            + decode_token_s * generated_tokens   # extra cost of each live sequence
            + decode_token_s * concurrent * decode_steps  # other requests' sequences
            + prefill_s_per_token * queued_prefill        # other requests' prompts first

A batch of ``n`` sequences that all run ``S`` steps generates ``G = n * S``
tokens, so a decode step costs ``decode_step_s + decode_token_s * n``: parallel
samples are NOT assumed free; calibration measures ``decode_token_s``.
Sequences of one batch stop at different lengths; the batch lasts as long as its
longest sample, which we model as ``mean * (1 + length_spread * ln n)``.

Per strategy (``e`` = expected new tokens per sequence, capped by max_tokens):

- single: 1 call, S = e, G = e.
- best_of_n: 1 call, G = n e, S = longest of n. Adaptive: waves of 2, 2, 4, 8 ...
  new samples (cumulative doubling) run one after another: conservative.
- beam (step-level, batched sampling): each round samples ``expansions`` per
  live beam for one segment of ``beam_segment_tokens``; rounds = ceil(e / seg);
  S = e, G = n * expansions * e; each round re-prefills the beams' new segment.
- vllm_beam: vLLM's Python beam loop issues one request per token: e calls of
  ``vllm_beam_token_overhead_s`` plus a 2n-sequence decode step each.

Online correction: prediction = physics(params) * load_factor * config_factor[name].
Each measured run moves both factors toward the observation in log space
(``load_factor`` by ``load_rate``: the machine got busier for everyone;
``config_factor`` by ``config_rate``: the physics is off for this configuration).
Per-sequence output length is learned per answer kind (EWMA).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
import threading
from collections import deque
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from tidal_agents.allocation.features import ANSWER_KINDS, StepFeatures
from tidal_agents.errors import TidalConfigError
from tidal_agents.paths import calibration_dir
from tidal_agents.types import CostRecord, StrategyConfig
from tidal_agents.validation import check_int, check_number

_FORMAT_VERSION = 1
#: correction factors are clamped here: one wild measurement must not poison the model
_FACTOR_MIN, _FACTOR_MAX = 0.1, 10.0


@dataclass(frozen=True)
class CostParams:
    """The physical parameters of a backend (seconds, tokens).

    Defaults (the prior before `calibrate()` has run): `calibrate()` on the
    2-core AVX-512 CPU, in-process vLLM (eager, bf16), SmolLM2-135M-Instruct,
    lightly loaded (12 requests, R^2 0.97, mean relative error 6%): 61 ms per
    call, 0.81 ms per prefilled token, 26.4 ms per decode step + 1.8 ms per live
    sequence per step. That is n=1 x 64 tokens ~1.9 s and n=8 ~2.7 s; the committed
    calibration (docs/results/calibration.json) predicts 2.1 s and 3.2 s, so n=8 is
    17% under it (tests/unit/test_allocation_cost_model.py checks both).
    With other engines sharing the two cores, calibration measured 2-4x these figures; the online
    load factor absorbs such contention.
    """

    overhead_s: float = 0.06
    prefill_s_per_token: float = 0.0008
    decode_step_s: float = 0.026
    decode_token_s: float = 0.0018
    length_spread: float = 0.15
    beam_segment_tokens: int = 32
    vllm_beam_token_overhead_s: float = 0.15

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if name == "beam_segment_tokens":
                check_int(f"CostParams.{name}", value, lo=1)
            else:
                check_number(f"CostParams.{name}", value, lo=0)


@dataclass(frozen=True)
class CostPrediction:
    """Predicted spend of one configuration on one step."""

    tokens: float  # generated tokens, all samples (what lambda_T prices)
    latency_s: float


@dataclass(frozen=True)
class RunShape:
    """How a configuration's work decomposes (before load corrections)."""

    calls: float
    prefill_tokens: float
    decode_steps: float
    generated_tokens: float
    #: other requests' sequences decoding beside this run (they share its steps)
    concurrent_sequences: float = 0.0
    #: other requests' prompt tokens prefilled before this run's first token
    queued_prefill_tokens: float = 0.0


#: measured beam-search corrections on the 2-core CPU (see `CostModel.default`)
DEFAULT_BEAM_FACTORS: dict[str, float] = {"beam2": 1.6, "beam4": 1.9}
#: prior new tokens per sequence when the step does not say (learned online)
DEFAULT_OUTPUT_TOKENS: dict[str, float] = {
    "text": 96.0, "math": 128.0, "tool_call": 40.0, "tool_answer": 40.0,
}


#: recent steps whose measured / predicted latency ratios set the headroom
RATIO_WINDOW = 64
HEADROOM_QUANTILE = 0.8
HEADROOM_MIN_SAMPLES = 5
HEADROOM_MAX = 2.0


@dataclass
class CostModel:
    """Parametric latency/token model of one backend, corrected online.

    Thread-safe: `update` may run while other threads `predict`.
    """

    params: CostParams = field(default_factory=CostParams)
    load_factor: float = 1.0
    config_factors: dict[str, float] = field(default_factory=dict)
    output_tokens: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_OUTPUT_TOKENS))
    load_rate: float = 0.15
    config_rate: float = 0.25
    tokens_rate: float = 0.2
    backend_id: str | None = None
    updates: int = 0
    #: where the parameters came from: "prior" or "calibrated"
    source: str = "prior"
    #: calibration fit summary (R^2, mean relative error, samples), if calibrated
    fit: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("load_rate", "config_rate", "tokens_rate"):
            check_number(name, getattr(self, name), lo=0, hi=1, hi_open=True)
        if self.load_rate + self.config_rate >= 1:
            # both factors move on one residual: together they must not overshoot it
            raise TidalConfigError(
                f"load_rate + config_rate = {self.load_rate + self.config_rate}: allowed is < 1."
            )
        self._lock = threading.Lock()
        #: measured / predicted wall time of this process's recent completed steps
        #: (not saved: it describes this run's conditions, see `latency_headroom`)
        self._latency_ratios: deque[float] = deque(maxlen=RATIO_WINDOW)

    # ------------------------------------------------------------------ priors
    @classmethod
    def default(cls, backend_id: str | None = None) -> CostModel:
        """Documented priors for the 2-core CPU (see `CostParams`).

        Step beam search measured 1.6x (width 2) and 1.9x (width 4) slower than
        its run shape predicts (separate requests per beam, a barrier per round):
        those are its starting corrections.
        """
        return cls(params=CostParams(), backend_id=backend_id, source="prior",
                   config_factors=dict(DEFAULT_BEAM_FACTORS))

    # -------------------------------------------------------------- prediction
    def expected_output_tokens(self, config: StrategyConfig, features: StepFeatures) -> float:
        """New tokens per sequence: the step's own estimate, else the learned mean."""
        e = features.expected_output_tokens
        expected = float(e) if e is not None else self.output_tokens[features.answer_kind]
        return max(1.0, min(float(config.max_tokens), expected))

    def shape(self, config: StrategyConfig, features: StepFeatures, per_seq: float) -> RunShape:
        """The work of `config` when each sequence generates `per_seq` new tokens."""
        shape = self._own_shape(config, features, per_seq)
        return replace(shape, concurrent_sequences=float(features.concurrent_sequences),
                       queued_prefill_tokens=float(features.queued_prompt_tokens))

    def _own_shape(
        self, config: StrategyConfig, features: StepFeatures, per_seq: float
    ) -> RunShape:
        p = self.params
        uncached = float(features.uncached_prompt_tokens)
        n = config.n
        if config.strategy == "single":
            return RunShape(1.0, uncached, per_seq, per_seq)
        if config.strategy == "best_of_n":
            if not config.adaptive or n <= 2:
                return RunShape(1.0, uncached, self._longest(per_seq, n, config), n * per_seq)
            waves = _waves(n)
            steps = sum(self._longest(per_seq, w, config) for w in waves)
            # later waves hit the prefix cache for the prompt
            return RunShape(float(len(waves)), uncached, steps, n * per_seq)
        if config.strategy == "beam":
            seqs = n * config.expansions
            rounds = math.ceil(per_seq / p.beam_segment_tokens)
            return RunShape(
                float(rounds), uncached + n * per_seq, per_seq, seqs * per_seq
            )
        # vllm_beam: one request per token, 2n candidate sequences per step
        return RunShape(per_seq, uncached + n * per_seq, per_seq, 2 * n * per_seq)

    def _longest(self, per_seq: float, n: int, config: StrategyConfig) -> float:
        spread = 1 + self.params.length_spread * math.log(n)
        return min(float(config.max_tokens), per_seq * spread)

    def physics_latency(self, config: StrategyConfig, shape: RunShape) -> float:
        """Latency from the parameters alone (no load corrections)."""
        p = self.params
        call_overhead = p.overhead_s
        if config.strategy == "vllm_beam":
            call_overhead += p.vllm_beam_token_overhead_s
        return (
            shape.calls * call_overhead
            + p.prefill_s_per_token * (shape.prefill_tokens + shape.queued_prefill_tokens)
            + p.decode_step_s * shape.decode_steps
            + p.decode_token_s * shape.generated_tokens
            # a batched step costs per live sequence, whoever's it is
            + p.decode_token_s * shape.concurrent_sequences * shape.decode_steps
        )

    def predict(self, config: StrategyConfig, features: StepFeatures) -> CostPrediction:
        """Predicted generated tokens and wall-clock seconds of `config` on this step."""
        per_seq = self.expected_output_tokens(config, features)
        shape = self.shape(config, features, per_seq)
        factor = self.load_factor * self.config_factors.get(config.name, 1.0)
        return CostPrediction(
            tokens=shape.generated_tokens,
            latency_s=self.physics_latency(config, shape) * factor,
        )

    # ------------------------------------------------------------------ update
    def update(self, config: StrategyConfig, features: StepFeatures, cost: CostRecord) -> None:
        """Move the model toward one measured run (exponentially weighted).

        Cut-short runs are censored: their wall time is a lower bound, so they
        only ever raise the prediction, and only through the load factor. Runs
        that spent nothing are ignored.
        """
        if cost.engine_calls <= 0 or cost.wall_s <= 0 or cost.generated_tokens <= 0:
            return
        predicted = self.predict(config, features).latency_s
        if not cost.cut_short and predicted > 0:
            with self._lock:
                self._latency_ratios.append(cost.wall_s / predicted)
        seqs = _sequences(config)
        actual_per_seq = cost.generated_tokens / seqs
        with self._lock:
            if features.expected_output_tokens is None and not cost.cut_short:
                kind = features.answer_kind
                old = self.output_tokens[kind]
                self.output_tokens[kind] = old + self.tokens_rate * (actual_per_seq - old)
            # the speed residual is judged at the length that really happened, so a
            # length surprise is not mistaken for a slower machine
            per_seq = max(1.0, min(actual_per_seq, float(config.max_tokens)))
            base = self.physics_latency(config, self.shape(config, features, per_seq))
            if base <= 0:
                return
            cfg = self.config_factors.get(config.name, 1.0)
            residual = math.log(cost.wall_s / (base * self.load_factor * cfg))
            if cost.cut_short and residual < 0:
                return
            self.load_factor = _clamp(self.load_factor * math.exp(self.load_rate * residual))
            if not cost.cut_short:
                # a run cut short says the machine is slower than predicted, not this
                # configuration: under load the cheapest configuration is the one cut
                # most, and blaming it would make a costlier one look faster
                self.config_factors[config.name] = _clamp(
                    cfg * math.exp(self.config_rate * residual)
                )
            self.updates += 1

    def latency_headroom(
        self, quantile: float = HEADROOM_QUANTILE, min_samples: int = HEADROOM_MIN_SAMPLES
    ) -> float:
        """How much to inflate a predicted latency before comparing it with an allowance.

        The `quantile` of measured / predicted wall time over this process's last
        `RATIO_WINDOW` completed steps, clipped to [1, HEADROOM_MAX]; 1 (trust the
        prediction) until `min_samples` steps were measured. A configuration whose
        prediction only just fits runs past its allowance about half of the time
        and is cut short; on a tool step a half-written call is no call at all.
        """
        with self._lock:
            ratios = sorted(self._latency_ratios)
        if len(ratios) < min_samples:
            return 1.0
        q = ratios[min(len(ratios) - 1, int(quantile * len(ratios)))]
        return min(HEADROOM_MAX, max(1.0, q))

    # --------------------------------------------------------------- persistence
    def to_dict(self) -> dict[str, Any]:
        with self._lock:
            return {
                "format_version": _FORMAT_VERSION,
                "backend_id": self.backend_id,
                "source": self.source,
                "params": asdict(self.params),
                "load_factor": self.load_factor,
                "config_factors": dict(self.config_factors),
                "output_tokens": dict(self.output_tokens),
                "load_rate": self.load_rate,
                "config_rate": self.config_rate,
                "tokens_rate": self.tokens_rate,
                "updates": self.updates,
                "fit": dict(self.fit),
            }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CostModel:
        """Read `to_dict` output; anything else is a TidalConfigError naming the field."""
        if not isinstance(data, dict):
            raise TidalConfigError(
                f"Cost model data must be a JSON object, got {type(data).__name__}."
            )
        if data.get("format_version") != _FORMAT_VERSION:
            raise TidalConfigError(
                f"Cost model format_version={data.get('format_version')!r}: "
                f"this version reads {_FORMAT_VERSION}; re-run `tidal-agents calibrate`."
            )
        unknown = sorted(set(data) - _FILE_KEYS, key=str)
        if unknown:
            raise TidalConfigError(
                f"Unknown cost model key(s) {unknown}; allowed: {sorted(_FILE_KEYS)}."
            )
        try:
            raw_params = data["params"]
            if not isinstance(raw_params, dict):
                raise TypeError(f"params must be an object, got {type(raw_params).__name__}")
            unknown = sorted(set(raw_params) - {f.name for f in fields(CostParams)}, key=str)
            if unknown:
                raise TidalConfigError(
                    f"Unknown cost model params {unknown}; allowed: "
                    f"{sorted(f.name for f in fields(CostParams))}."
                )
            params = CostParams(**raw_params)
            output_tokens = dict(DEFAULT_OUTPUT_TOKENS)
            output_tokens.update({k: _positive(f"output_tokens[{k!r}]", v)
                                  for k, v in _mapping(data, "output_tokens").items()
                                  if k in ANSWER_KINDS})
            backend_id = data.get("backend_id")
            if backend_id is not None and not isinstance(backend_id, str):
                raise TypeError(f"backend_id must be a string or null, got {backend_id!r}")
            updates = data.get("updates", 0)
            check_int("updates", updates, lo=0)
            return cls(
                params=params,
                load_factor=_positive("load_factor", data.get("load_factor", 1.0)),
                config_factors={
                    str(k): _positive(f"config_factors[{k!r}]", v)
                    for k, v in _mapping(data, "config_factors").items()
                },
                output_tokens=output_tokens,
                load_rate=_number("load_rate", data.get("load_rate", 0.15)),
                config_rate=_number("config_rate", data.get("config_rate", 0.25)),
                tokens_rate=_number("tokens_rate", data.get("tokens_rate", 0.2)),
                backend_id=backend_id,
                updates=updates,
                source=str(data.get("source", "prior")),
                fit={str(k): _number(f"fit[{k!r}]", v, finite=False)
                     for k, v in _mapping(data, "fit").items()},
            )
        except TidalConfigError as exc:
            raise TidalConfigError(f"Malformed cost model file: {exc}") from exc
        except (KeyError, TypeError, ValueError) as exc:
            raise TidalConfigError(f"Malformed cost model file: {exc}") from exc

    def save(self, path: str | Path | None = None) -> Path:
        """Write JSON atomically (to `default_path(backend_id)` when no path)."""
        if path is None:
            if self.backend_id is None:
                raise TidalConfigError("save() without a path needs a backend_id on the model.")
            path = default_path(self.backend_id)
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.name, suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            json.dump(self.to_dict(), fh, indent=2, sort_keys=True)
        os.replace(tmp, target)  # readers never see a half-written file
        return target

    @classmethod
    def load(cls, path: str | Path) -> CostModel:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise TidalConfigError(f"Cost model file {path} is not valid JSON: {exc}") from exc
        except OSError as exc:
            raise TidalConfigError(f"Cannot read cost model file {path}: {exc}") from exc
        try:
            return cls.from_dict(data)
        except TidalConfigError as exc:
            raise TidalConfigError(f"{path}: {exc}") from exc

    @classmethod
    def for_backend(cls, backend_id: str) -> CostModel:
        """The saved calibration of `backend_id`, else the documented priors."""
        path = default_path(backend_id)
        if path.exists():
            return cls.load(path)
        return cls.default(backend_id)

    def copy(self) -> CostModel:
        return CostModel.from_dict(self.to_dict())

    def with_params(self, params: CostParams) -> CostModel:
        clone = self.copy()
        clone.params = replace(params)
        return clone


def default_path(backend_id: str) -> Path:
    """calibration_dir()/<readable slug>-<hash>.json for one backend id."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", backend_id).strip("_")[:80]
    digest = hashlib.sha256(backend_id.encode()).hexdigest()[:10]
    return calibration_dir() / f"cost-{slug}-{digest}.json"


def _sequences(config: StrategyConfig) -> float:
    """Sequences that generate tokens over a run (to turn totals into per-sequence)."""
    if config.strategy == "beam":
        return float(config.n * config.expansions)
    if config.strategy == "vllm_beam":
        return float(2 * config.n)
    return float(config.n)


def _waves(n: int) -> list[int]:
    """Adaptive best-of-n: new samples per wave for cumulative 2, 4, 8, ... up to n."""
    waves, total = [2], 2
    while total < n:
        step = min(total, n - total)
        waves.append(step)
        total += step
    return waves


#: the top-level keys `to_dict` writes (a file with others is from another format)
_FILE_KEYS = frozenset({
    "format_version", "backend_id", "source", "params", "load_factor", "config_factors",
    "output_tokens", "load_rate", "config_rate", "tokens_rate", "updates", "fit",
})


def _mapping(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise TypeError(f"{key} must be an object, got {type(value).__name__}")
    return value


def _number(name: str, value: Any, finite: bool = True) -> float:
    """A finite number as a float; with ``finite=False`` any float passes (a fit
    summary may hold an undefined R^2)."""
    if finite or not isinstance(value, float):
        check_number(name, value)
    return float(value)


def _positive(name: str, value: Any) -> float:
    check_number(name, value, lo=0, lo_open=True)
    return float(value)


def _clamp(x: float) -> float:
    return min(_FACTOR_MAX, max(_FACTOR_MIN, x))
