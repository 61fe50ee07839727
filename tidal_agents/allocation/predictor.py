"""Accuracy predictors: P(step answer is right | features, configuration).

Two kinds, both behind `AccuracyPredictor`:

- `PriorAccuracyPredictor` ("prior"): a documented closed form with diminishing
  returns in the number of samples, usable before any training data exists.
- `SklearnAccuracyPredictor` ("trained"): the paper's probe recipe on our cheap
  features: a classifier over features + configuration encoding, trained on
  bootstrapped soft labels and Platt- (or isotonic-) calibrated.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from tidal_agents.allocation.features import FEATURE_NAMES, StepFeatures, StepKind
from tidal_agents.errors import TidalConfigError
from tidal_agents.types import StrategyConfig

PredictorKind = Literal["prior", "trained"]

#: file name of the shipped default predictor inside the tidal_agents.data package
DEFAULT_PREDICTOR_FILE = "accuracy_predictor.joblib"


@runtime_checkable
class AccuracyPredictor(Protocol):
    @property
    def kind(self) -> str:
        """'trained' for a fitted predictor, 'prior' for the closed-form prior."""
        ...

    def predict(self, features: StepFeatures, configs: Sequence[StrategyConfig]) -> list[float]:
        """Predicted accuracy in [0, 1] of each configuration on this step."""
        ...


# ---------------------------------------------------------------------- prior
#: base single-sample accuracy per answer kind before difficulty adjustments
_BASE_P1 = {"text": 0.55, "math": 0.35, "tool_call": 0.6, "tool_answer": 0.6}
#: exponent alpha of the effective sample count per selector (diminishing returns)
_ALPHA = {"majority": 0.35, "confidence": 0.4, "tool_vote": 0.35, "scorer": 0.45, "first": 0.0}


@dataclass(frozen=True)
class PriorAccuracyPredictor:
    """p(N) = 1 - (1 - p1) ** (N_eff ** alpha): more samples help, less and less.

    p1 (one sample's accuracy) starts from a per-kind base and drops with difficulty
    cues: long numbers (a 135M model does 1-digit sums at 0.3, 3-digit at 0.0:
    docs/design-notes.md, 'The embedded model's arithmetic'), arithmetic, long
    questions, many tools, past tool errors; it is clamped to [0.02, 0.95]. A
    sampled single answer (temperature > 0) is slightly worse than greedy. N_eff is
    n for best_of_n and n * expansions for beam search. alpha depends on the
    selector ("first" gains nothing from extra samples). Truncation: when max_tokens
    is below the step's expected output length, accuracy scales by
    (max_tokens / expected) ** 0.5.
    """

    kind: str = "prior"
    base_p1: tuple[tuple[str, float], ...] = tuple(_BASE_P1.items())
    beam_alpha: float = 0.4
    sampled_single_penalty: float = 0.95

    def p1(self, features: StepFeatures) -> float:
        p = dict(self.base_p1)[features.answer_kind]
        p -= 0.06 * max(0, features.max_number_digits - 1)
        p -= 0.05 * features.has_math_ops
        p -= 0.04 * math.log2(1 + features.words / 50)
        p -= 0.08 * features.previous_tool_errors
        p -= 0.02 * max(0, features.tools_bound - 3)
        if features.answer_kind == "tool_call" and features.tool_choice_required:
            p += 0.05  # a forced, grammar-guided call is at least well-formed
        return min(0.95, max(0.02, p))

    def predict(self, features: StepFeatures, configs: Sequence[StrategyConfig]) -> list[float]:
        p1 = self.p1(features)
        expected = features.expected_output_tokens
        out = []
        for c in configs:
            if c.strategy == "single":
                p = p1 if c.temperature == 0 else p1 * self.sampled_single_penalty
            else:
                if c.strategy == "best_of_n":
                    n_eff, alpha = float(c.n), _ALPHA.get(c.selector, 0.35)
                else:
                    n_eff, alpha = float(c.n * c.expansions), self.beam_alpha
                p = 1.0 - (1.0 - p1) ** (n_eff**alpha)
            if expected is not None and c.max_tokens < expected:
                p *= math.sqrt(c.max_tokens / expected)
            out.append(min(1.0, max(0.0, p)))
        return out


# -------------------------------------------------------------------- trained
_STRATEGIES = ("single", "best_of_n", "beam", "vllm_beam")
_SELECTORS = ("first", "majority", "confidence", "tool_vote", "scorer")
CONFIG_FEATURE_NAMES: tuple[str, ...] = (
    *(f"strategy_{s}" for s in _STRATEGIES),
    *(f"selector_{s}" for s in _SELECTORS),
    "log2_n",
    "log2_max_tokens",
    "temperature",
    "adaptive",
    "log2_expansions",
)


def config_vector(config: StrategyConfig) -> list[float]:
    """Configuration encoding: strategy/selector one-hot, log N, budget, sampling."""
    return [
        *(float(config.strategy == s) for s in _STRATEGIES),
        *(float(config.selector == s) for s in _SELECTORS),
        math.log2(config.n),
        math.log2(config.max_tokens),
        float(config.temperature),
        float(config.adaptive),
        math.log2(config.expansions) if config.strategy == "beam" else 0.0,
    ]


@dataclass(frozen=True)
class TrainingRow:
    """One (step, configuration) pair and its soft label: P(selected answer is right)."""

    features: StepFeatures
    config: StrategyConfig
    soft_label: float


def design_matrix(pairs: Iterable[tuple[StepFeatures, StrategyConfig]]) -> np.ndarray:
    return np.array([f.vector_values() + config_vector(c) for f, c in pairs], dtype=np.float64)


class SklearnAccuracyPredictor:
    """A calibrated scikit-learn classifier over features + configuration.

    Soft labels are fitted exactly: each row enters twice, as a positive with
    weight `soft_label` and as a negative with weight `1 - soft_label` (the
    weighted log-loss then equals the BCE on soft labels the paper used).

    Estimators: "hgb" (gradient-boosted trees, default) or "logistic" (on
    standardised features plus their products with log2 of the sample count,
    so the gain from more samples can depend on the query). Calibration:
    "sigmoid" (Platt, the paper's choice) or "isotonic".

    `per_kind`: one such model per kind of step (`StepFeatures.answer_kind`), each fitted
    on its kind's rows only: what extra samples buy differs by kind of step more than
    one model's shared coefficients can express (docs/evaluation.md).

    Prediction does not go through scikit-learn: its tree ensembles predict with
    OpenMP threads, which on a busy 2-core machine took 10-260 ms for 8 rows. The
    fitted trees and calibrator are compiled into numpy arrays instead (~0.1 ms),
    checked against scikit-learn's own `predict_proba` when compiled.
    """

    kind: str = "trained"

    def __init__(
        self,
        estimator: Literal["hgb", "logistic"] = "hgb",
        calibration: Literal["sigmoid", "isotonic"] = "sigmoid",
        cv: int = 3,
        random_state: int = 0,
        per_kind: bool = False,
    ) -> None:
        if estimator not in ("hgb", "logistic"):
            raise TidalConfigError(f"estimator={estimator!r}: allowed are 'hgb', 'logistic'.")
        if calibration not in ("sigmoid", "isotonic"):
            raise TidalConfigError(
                f"calibration={calibration!r}: allowed are 'sigmoid' (Platt), 'isotonic'."
            )
        if not isinstance(cv, int) or cv < 2:
            raise TidalConfigError(f"cv={cv!r}: allowed is an integer >= 2.")
        self.estimator = estimator
        self.calibration = calibration
        self.cv = cv
        self.random_state = random_state
        self.per_kind = bool(per_kind)
        #: per_kind: the fitted model of each kind of step
        self.parts: dict[str, SklearnAccuracyPredictor] = {}
        self.model: Any = None
        self.feature_names = FEATURE_NAMES + CONFIG_FEATURE_NAMES
        self.n_rows = 0
        #: standardisation of the logistic model's inputs (None for trees)
        self.scale: tuple[np.ndarray, np.ndarray] | None = None
        #: per step kind (`StepFeatures.answer_kind`), the configuration names it was
        #: trained on (None: not recorded, e.g. a file from an older version)
        self.coverage: dict[str, list[str]] | None = None
        #: False when the data had fewer than `cv` rows of right (or wrong) outcomes and
        #: the model is not Platt-calibrated (per kind: see `parts`)
        self.calibrated = True
        #: the prediction of a part fitted on one outcome only (model "constant")
        self.constant = 0.0
        self._fast: _CompiledModel | None = None

    def covers(self, kind: str, config_names: Iterable[str]) -> bool:
        """Whether the training data held steps of `kind` under every named configuration
        (a file without the record is trusted)."""
        if self.coverage is None:
            return True
        return set(config_names) <= set(self.coverage.get(kind, ()))

    def _base(self) -> Any:
        if self.estimator == "hgb":
            from sklearn.ensemble import HistGradientBoostingClassifier

            return HistGradientBoostingClassifier(
                max_iter=150, learning_rate=0.05, max_leaf_nodes=15, min_samples_leaf=10,
                random_state=self.random_state,
            )
        from sklearn.linear_model import LogisticRegression

        # plain estimator (not a Pipeline): it must receive the sample weights
        return LogisticRegression(max_iter=2000, C=1.0)

    def _inputs(self, x: np.ndarray) -> np.ndarray:
        """The estimator's input: raw for trees; standardised + interactions for logistic."""
        if self.estimator == "hgb":
            return x
        assert self.scale is not None
        mean, std = self.scale
        z = (x - mean) / std
        n_eff = z[:, [len(FEATURE_NAMES) + CONFIG_FEATURE_NAMES.index("log2_n")]]
        return np.hstack([z, z[:, : len(FEATURE_NAMES)] * n_eff])

    def fit(
        self, rows: Iterable[TrainingRow | tuple[StepFeatures, StrategyConfig, float]]
    ) -> SklearnAccuracyPredictor:
        from sklearn.calibration import CalibratedClassifierCV

        parsed = [r if isinstance(r, TrainingRow) else TrainingRow(*r) for r in rows]
        if self.per_kind:
            return self._fit_per_kind(parsed)
        labels = np.array([r.soft_label for r in parsed], dtype=np.float64)
        if len(parsed) < 2 * self.cv:
            raise TidalConfigError(
                f"fit() got {len(parsed)} rows; allowed is at least {2 * self.cv} (2 x cv)."
            )
        if not np.all(np.isfinite(labels)) or labels.min() < 0 or labels.max() > 1:
            raise TidalConfigError("soft_label values must be finite numbers in [0, 1].")
        if labels.max() <= 0 or labels.min() >= 1:
            raise TidalConfigError(
                "All soft labels are 0 (or all 1): the predictor needs both right and wrong "
                "outcomes to learn anything."
            )
        # Platt calibration by cv folds needs cv rows of each class; a small collection
        # (a user's first try) gets the plain model, and `calibrated` says so.
        self.calibrated = min(int((labels > 0).sum()), int((labels < 1).sum())) >= self.cv
        x = design_matrix((r.features, r.config) for r in parsed)
        if self.estimator == "logistic":
            std = x.std(axis=0)
            self.scale = (x.mean(axis=0), np.where(std > 0, std, 1.0))
        xx = np.concatenate([x, x])
        yy = np.concatenate([np.ones(len(parsed)), np.zeros(len(parsed))])
        ww = np.concatenate([labels, 1 - labels])
        keep = ww > 0
        model = CalibratedClassifierCV(
            self._base(), method=self.calibration, cv=self.cv, ensemble=False
        ) if self.calibrated else self._base()
        from threadpoolctl import threadpool_limits

        # One thread: OpenMP trees on a busy 2-core machine ran 100x slower (375 s vs ~3 s).
        with threadpool_limits(1):
            model.fit(self._inputs(xx[keep]), yy[keep], sample_weight=ww[keep])
        self.model = model
        self.n_rows = len(parsed)
        seen: dict[str, set[str]] = {}
        for r in parsed:
            seen.setdefault(r.features.answer_kind, set()).add(r.config.name)
        self.coverage = {k: sorted(v) for k, v in sorted(seen.items())}
        self._fast = _compile(self, x[: min(len(x), 64)])
        return self

    def _fit_per_kind(self, rows: list[TrainingRow]) -> SklearnAccuracyPredictor:
        by_kind: dict[str, list[TrainingRow]] = {}
        for r in rows:
            by_kind.setdefault(r.features.answer_kind, []).append(r)
        self.parts = {}
        for kind, part in sorted(by_kind.items()):
            model = SklearnAccuracyPredictor(self.estimator, self.calibration, self.cv,  # type: ignore[arg-type]
                                             self.random_state)
            labels = {r.soft_label for r in part}
            if labels <= {0.0} or labels <= {1.0}:
                # every configuration always wrong (or right) on this kind: that is the
                # prediction, and the utility then picks the cheapest configuration
                self.parts[kind] = model._fit_constant(part, labels.pop())
                continue
            try:
                self.parts[kind] = model.fit(part)
            except TidalConfigError as err:
                raise TidalConfigError(f"steps of kind {kind!r} ({len(part)} rows): {err}") from err
        self.model = "per_kind"
        self.calibrated = all(p.calibrated for p in self.parts.values())
        self.n_rows = len(rows)
        self.coverage = {k: (p.coverage or {}).get(k, []) for k, p in self.parts.items()}
        return self

    def _fit_constant(self, rows: list[TrainingRow], value: float) -> SklearnAccuracyPredictor:
        self.model, self.constant, self.calibrated = "constant", value, False
        self.n_rows = len(rows)
        self.coverage = {rows[0].features.answer_kind: sorted({r.config.name for r in rows})}
        return self

    def predict(self, features: StepFeatures, configs: Sequence[StrategyConfig]) -> list[float]:
        if self.model is None:
            raise TidalConfigError("SklearnAccuracyPredictor.predict() before fit() or load().")
        if self.model == "constant":
            return [self.constant] * len(configs)
        if self.per_kind:
            part = self.parts.get(features.answer_kind)
            if part is None:
                raise TidalConfigError(
                    f"this predictor has no model for steps of kind {features.answer_kind!r}; "
                    f"it was trained on {sorted(self.parts)} (see `covers`)."
                )
            return part.predict(features, configs)
        x = design_matrix((features, c) for c in configs)
        if self._fast is not None:
            proba = self._fast.predict(self._inputs(x))
        else:  # pragma: no cover - only for model shapes the compiler does not know
            proba = self.predict_sklearn(x)
        return [float(min(1.0, max(0.0, p))) for p in proba]

    def predict_sklearn(self, x: np.ndarray) -> np.ndarray:
        """scikit-learn's own prediction of design matrix `x` (single-threaded)."""
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1):
            return np.asarray(self.model.predict_proba(self._inputs(x))[:, 1])

    # --------------------------------------------------------------- persistence
    def save(self, path: str | Path) -> Path:
        import joblib

        if self.model is None:
            raise TidalConfigError("Nothing to save: fit() the predictor first.")
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        joblib.dump(self._blob(), target)
        return target

    def _blob(self) -> dict[str, Any]:
        return {
            "format": "tidal-accuracy-predictor-1",
            "feature_names": list(self.feature_names),
            "estimator": self.estimator,
            "calibration": self.calibration,
            "cv": self.cv,
            "n_rows": self.n_rows,
            "scale": self.scale,
            "coverage": self.coverage,
            "calibrated": self.calibrated,
            "constant": self.constant,
            "model": self.model,
            "parts": {k: p._blob() for k, p in self.parts.items()} if self.per_kind else None,
        }

    @classmethod
    def load(cls, path: str | Path) -> SklearnAccuracyPredictor:
        import joblib

        blob = joblib.load(Path(path))
        if not isinstance(blob, dict) or blob.get("format") != "tidal-accuracy-predictor-1":
            raise TidalConfigError(f"{path} is not a tidal_agents accuracy predictor file.")
        expected = list(FEATURE_NAMES + CONFIG_FEATURE_NAMES)
        if blob["feature_names"] != expected:
            raise TidalConfigError(
                f"{path} was trained on features {blob['feature_names']}; this version uses "
                f"{expected}. Retrain it."
            )
        return cls._from_blob(blob)

    @classmethod
    def _from_blob(cls, blob: dict[str, Any]) -> SklearnAccuracyPredictor:
        parts = blob.get("parts")
        pred = cls(estimator=blob["estimator"], calibration=blob["calibration"], cv=blob["cv"],
                   per_kind=parts is not None)
        pred.model = blob["model"]
        pred.n_rows = int(blob.get("n_rows", 0))
        pred.scale = blob.get("scale")
        pred.coverage = blob.get("coverage")
        pred.calibrated = bool(blob.get("calibrated", True))
        pred.constant = float(blob.get("constant", 0.0))
        if pred.model == "constant":
            return pred
        if parts is not None:
            pred.parts = {k: cls._from_blob(b) for k, b in parts.items()}
            pred.calibrated = all(p.calibrated for p in pred.parts.values())
            return pred
        probe = design_matrix(
            (StepFeatures.from_text(q, prompt_tokens=t, answer_kind=k), c)
            for q, t, k in _PROBE_STEPS
            for c in _PROBE_CONFIGS
        )
        pred._fast = _compile(pred, probe)
        return pred

    @classmethod
    def load_default(cls) -> SklearnAccuracyPredictor | None:
        """The predictor shipped in tidal_agents/data/, or None if there is none."""
        try:
            ref = resources.files("tidal_agents").joinpath("data", DEFAULT_PREDICTOR_FILE)
        except ModuleNotFoundError:  # pragma: no cover - the package itself is importable
            return None
        if not ref.is_file():
            return None
        with resources.as_file(ref) as path:
            return cls.load(path)


#: steps and configurations on which a loaded model's compiled form is checked
_PROBE_STEPS: tuple[tuple[str, int, StepKind], ...] = (
    ("What is 3 + 4?", 40, "math"),
    ("What is 123 * 45?", 300, "math"),
    ("Call the weather tool for Paris.", 500, "tool_call"),
    ("How many miles is 10 km?", 200, "tool_answer"),
    ("Hello!", 20, "text"),
)
_PROBE_CONFIGS = (
    StrategyConfig(strategy="single", temperature=0.0),
    StrategyConfig(strategy="best_of_n", n=8, selector="majority"),
    StrategyConfig(strategy="best_of_n", n=16, selector="confidence", max_tokens=64),
    StrategyConfig(strategy="beam", n=4),
)


class _CompiledModel:
    """A fitted calibrated classifier as numpy arrays: decision function + calibrator."""

    def __init__(self, decision: Any, calibrator: Any, sigmoid: bool) -> None:
        self.decision = decision
        self.calibrator = calibrator
        self.sigmoid = sigmoid
        if sigmoid:
            self.a, self.b = float(calibrator.a_), float(calibrator.b_)

    def predict(self, x: np.ndarray) -> np.ndarray:
        f = self.decision(x)
        if self.sigmoid:
            from scipy.special import expit

            return np.asarray(expit(-(self.a * f + self.b)))
        return np.asarray(self.calibrator.predict(f), dtype=np.float64)


class _CompiledTrees:
    """Every tree of a binary HistGradientBoostingClassifier, walked for all rows at once.

    Leaves point to themselves, so `depth` steps of one vectorised gather reach
    every leaf. Inputs have no missing values (our features never are NaN).
    """

    def __init__(self, est: Any) -> None:
        feats, thr, left, right, value, roots = [], [], [], [], [], []
        offset, depth = 0, 0
        for (tree,) in est._predictors:
            nodes = tree.nodes
            k = len(nodes)
            if np.any(nodes["is_categorical"]):
                raise ValueError("categorical splits are not compiled")
            leaf = nodes["is_leaf"].astype(bool)
            idx = np.arange(k) + offset
            feats.append(np.where(leaf, 0, nodes["feature_idx"]))
            thr.append(np.where(leaf, np.inf, nodes["num_threshold"]))
            left.append(np.where(leaf, idx, nodes["left"].astype(np.int64) + offset))
            right.append(np.where(leaf, idx, nodes["right"].astype(np.int64) + offset))
            value.append(np.where(leaf, nodes["value"], 0.0))
            roots.append(offset)
            depth = max(depth, int(nodes["depth"].max()))
            offset += k
        self.feature = np.concatenate(feats).astype(np.int64)
        self.threshold = np.concatenate(thr)
        self.left = np.concatenate(left)
        self.right = np.concatenate(right)
        self.value = np.concatenate(value)
        self.roots = np.array(roots, dtype=np.int64)
        self.depth = depth
        self.baseline = float(np.ravel(est._baseline_prediction)[0])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        rows = np.arange(x.shape[0])[:, None]
        node = np.broadcast_to(self.roots, (x.shape[0], len(self.roots)))
        for _ in range(self.depth):
            go_left = x[rows, self.feature[node]] <= self.threshold[node]
            node = np.where(go_left, self.left[node], self.right[node])
        return self.baseline + self.value[node].sum(axis=1)


def _compile(pred: SklearnAccuracyPredictor, probe: np.ndarray) -> _CompiledModel | None:
    """Compile `pred.model`; None (scikit-learn fallback) unless it reproduces sklearn."""
    try:
        (cc,) = pred.model.calibrated_classifiers_
        (calibrator,) = cc.calibrators
        est = cc.estimator
        if pred.estimator == "hgb":
            decision: Any = _CompiledTrees(est)
        else:
            coef = np.asarray(est.coef_[0], dtype=np.float64)
            intercept = float(est.intercept_[0])

            def decision(z: np.ndarray) -> np.ndarray:
                return z @ coef + intercept

        fast = _CompiledModel(decision, calibrator, pred.calibration == "sigmoid")
        if not np.allclose(fast.predict(pred._inputs(probe)), pred.predict_sklearn(probe),
                           atol=1e-9, rtol=0):
            raise ValueError("compiled predictions differ from scikit-learn's")
        return fast
    except (ValueError, AttributeError, TypeError):
        # a scikit-learn version with other internals: stay correct, just slower
        return None


# --------------------------------------------------------------- soft labels
def bootstrap_soft_label(
    answers: Sequence[str | None],
    correct: Sequence[bool],
    n: int,
    reps: int = 30,
    seed: int = 0,
) -> float:
    """The paper's soft label for majority-of-`n`: resample `n` of the pool `reps` times.

    `answers[i]` is sample i's extracted answer (None: no answer) and
    `correct[i]` whether it is right. Each replicate draws `n` samples with
    replacement, takes the most common answer (ties broken by first appearance,
    as a deterministic voter would) and scores 1 if that answer is a correct one.
    """
    if len(answers) != len(correct) or not answers:
        raise TidalConfigError("answers and correct must be non-empty and of equal length.")
    if not isinstance(n, int) or n < 1 or reps < 1:
        raise TidalConfigError(f"n={n!r}, reps={reps!r}: allowed are integers >= 1.")
    right = {a for a, c in zip(answers, correct, strict=True) if c and a is not None}
    rng = random.Random(seed)
    idx = range(len(answers))
    wins = 0
    for _ in range(reps):
        drawn = [answers[i] for i in rng.choices(idx, k=n)]
        votes = Counter(a for a in drawn if a is not None)
        if votes:
            winner = max(votes, key=lambda a: (votes[a], -drawn.index(a)))
            wins += winner in right
    return wins / reps
