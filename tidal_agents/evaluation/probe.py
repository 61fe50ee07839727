"""The seed paper's probe as an accuracy predictor, for offline comparison only.

The paper predicts a step's accuracy under each configuration from the
generator's last-layer hidden state at the final prompt token. `ProbePredictor`
fits that recipe on our outcome rows, given each query's hidden state
(`scripts/bench_probe.py` computes them), so the allocation benchmark's
cross-validation (`evaluation.cross_validated`, ``predictor_factory``) can
compare it with the surface features of `StepFeatures`. It is not in the
product path: the chat model has no hidden state to give it.

Feature sets: ``surface`` (the shipped predictor's `StepFeatures` vector),
``probe`` (the hidden state reduced by PCA) and ``surface+probe``. As in the
shipped recipe, one model per kind of step: a logistic regression over the
standardised query features, the configuration encoding and the query features'
products with log2 of the sample count, fitted on soft labels (each row twice,
weighted) and Platt-calibrated. Unlike the shipped recipe (C = 1), the
regularisation strength and the PCA dimension are chosen per kind by a
query-grouped cross-validation on the rows it is fitted on (soft log-loss),
since the hidden state has many more dimensions than there are queries.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tidal_agents.allocation.predictor import CONFIG_FEATURE_NAMES, config_vector
from tidal_agents.errors import TidalConfigError
from tidal_agents.evaluation.train import row_config, row_features

FEATURE_SETS: tuple[str, ...] = ("surface", "probe", "surface+probe")
#: inverse regularisation strengths tried per kind of step
C_GRID: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0)
#: hidden-state PCA dimensions tried per kind of step (capped by the queries available)
PCA_DIMS: tuple[int, ...] = (8, 32)
#: query-grouped folds of the choice of C and PCA dimension
SELECTION_FOLDS = 3
_LOG2_N = CONFIG_FEATURE_NAMES.index("log2_n")
#: one set of rows' surface features, hidden states (None: not in the set), configurations
Blocks = tuple[np.ndarray, np.ndarray | None, np.ndarray]


def _subset(blocks: Blocks, idx: np.ndarray) -> Blocks:
    query, hidden, config = blocks
    return query[idx], None if hidden is None else hidden[idx], config[idx]


def _soft_log_loss(p: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


@dataclass
class _Inputs:
    """The fitted transform of one kind's rows: PCA of the hidden state, standardisation."""

    pca: Any
    mean: np.ndarray
    std: np.ndarray
    n_query: int

    def __call__(self, query: np.ndarray, hidden: np.ndarray | None,
                 config: np.ndarray) -> np.ndarray:
        blocks = [query] if query.size else []
        if self.pca is not None and hidden is not None:
            blocks.append(self.pca.transform(hidden))
        x = np.hstack([*blocks, config])
        z = (x - self.mean) / self.std
        n_eff = z[:, [self.n_query + _LOG2_N]]
        return np.hstack([z, z[:, : self.n_query] * n_eff])


class ProbePredictor:
    """Per kind of step, a calibrated logistic model over a feature set (module docstring).

    `hidden` maps a query id to its hidden state; every row fitted or predicted
    must have one unless the feature set is ``surface``. `c_grid` and `pca_dims`: the
    candidates of the per-kind choice (one of each: no choice, e.g. the shipped C = 1).
    """

    kind: str = "trained"

    def __init__(self, feature_set: str, hidden: Mapping[str, np.ndarray] | None = None,
                 random_state: int = 0, calibration_cv: int = 3,
                 c_grid: Sequence[float] = C_GRID, pca_dims: Sequence[int] = PCA_DIMS) -> None:
        if feature_set not in FEATURE_SETS:
            raise TidalConfigError(f"feature_set={feature_set!r}: allowed are "
                                   f"{', '.join(FEATURE_SETS)}.")
        if "probe" in feature_set and not hidden:
            raise TidalConfigError(f"feature_set={feature_set!r} needs hidden states.")
        self.feature_set = feature_set
        self.hidden = hidden or {}
        self.random_state = random_state
        self.calibration_cv = calibration_cv
        if not c_grid or not pca_dims or min(c_grid) <= 0 or min(pca_dims) < 1:
            raise TidalConfigError(f"c_grid={c_grid!r}, pca_dims={pca_dims!r}: allowed are "
                                   "non-empty lists of positive numbers.")
        self.c_grid, self.pca_dims = tuple(c_grid), tuple(pca_dims)
        #: per kind: (input transform, fitted model, chosen C, chosen PCA dimension)
        self.parts: dict[str, tuple[_Inputs, Any, float, int]] = {}

    # ------------------------------------------------------------------ inputs
    def _blocks(self, rows: Sequence[dict[str, Any]]) -> Blocks:
        """Surface features, hidden states and configuration encodings of `rows`."""
        surface = "surface" in self.feature_set
        query = np.array([row_features(r).vector_values() if surface else [] for r in rows],
                         dtype=np.float64).reshape(len(rows), -1)
        hidden = None
        if "probe" in self.feature_set:
            missing = {r["query_id"] for r in rows} - set(self.hidden)
            if missing:
                raise TidalConfigError(f"no hidden state for {len(missing)} queries, e.g. "
                                       f"{sorted(missing)[:3]}.")
            hidden = np.stack([self.hidden[r["query_id"]] for r in rows]).astype(np.float64)
        config = np.array([config_vector(row_config(r)) for r in rows], dtype=np.float64)
        return query, hidden, config

    def _transform(self, rows: Sequence[dict[str, Any]], blocks: Blocks,
                   dims: int) -> _Inputs:
        query, hidden, config = blocks
        pca = None
        parts = [query] if query.size else []
        if hidden is not None:
            from sklearn.decomposition import PCA

            # fitted on one vector per query: rows repeat a query once per configuration
            first = {r["query_id"]: i for i, r in reversed(list(enumerate(rows)))}
            unique = hidden[sorted(first.values())]
            pca = PCA(n_components=min(dims, len(unique) - 1), random_state=self.random_state)
            pca.fit(unique)
            parts.append(pca.transform(hidden))
        x = np.hstack([*parts, config])
        std = x.std(axis=0)
        n_query = x.shape[1] - config.shape[1]
        return _Inputs(pca, x.mean(axis=0), np.where(std > 0, std, 1.0), n_query)

    # --------------------------------------------------------------------- fit
    def fit_outcome_rows(self, rows: Sequence[dict[str, Any]]) -> ProbePredictor:
        by_kind: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            by_kind.setdefault(row_features(r).answer_kind, []).append(r)
        self.parts = {kind: self._fit_kind(part) for kind, part in sorted(by_kind.items())}
        return self

    def _fit_kind(self, rows: list[dict[str, Any]]) -> tuple[_Inputs, Any, float, int]:
        from sklearn.calibration import CalibratedClassifierCV
        from threadpoolctl import threadpool_limits

        blocks = self._blocks(rows)
        labels = np.array([float(r["soft_label"]) for r in rows])
        groups = np.array([r["query_id"] for r in rows])
        dims_grid = self.pca_dims if "probe" in self.feature_set else (0,)
        with threadpool_limits(1):
            c, dims = ((self.c_grid[0], dims_grid[0])
                       if len(self.c_grid) == 1 and len(dims_grid) == 1
                       else self._choose(rows, blocks, labels, groups, dims_grid))
            inputs = self._transform(rows, blocks, dims)
            x, y, w = self._doubled(inputs(*blocks), labels)
            model = CalibratedClassifierCV(self._base(c), method="sigmoid",
                                           cv=self.calibration_cv, ensemble=False)
            model.fit(x, y, sample_weight=w)
        return inputs, model, c, dims

    @staticmethod
    def _base(c: float) -> Any:
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(max_iter=2000, C=c)

    @staticmethod
    def _doubled(x: np.ndarray, labels: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each row as a positive weighted by its soft label and a negative by the rest."""
        xx = np.concatenate([x, x])
        yy = np.concatenate([np.ones(len(x)), np.zeros(len(x))])
        ww = np.concatenate([labels, 1 - labels])
        keep = ww > 0
        return xx[keep], yy[keep], ww[keep]

    def _choose(self, rows: list[dict[str, Any]], blocks: Blocks, labels: np.ndarray,
                groups: np.ndarray, dims_grid: Sequence[int]) -> tuple[float, int]:
        """(C, PCA dimension) with the lowest query-grouped out-of-fold soft log-loss."""
        from sklearn.model_selection import GroupKFold

        folds = list(GroupKFold(n_splits=SELECTION_FOLDS).split(labels, groups=groups))
        scores: dict[tuple[float, int], float] = {}
        for dims in dims_grid:
            for fit_idx, held_idx in folds:
                fit_rows = [rows[i] for i in fit_idx]
                fit_blocks, held_blocks = _subset(blocks, fit_idx), _subset(blocks, held_idx)
                inputs = self._transform(fit_rows, fit_blocks, dims)
                x_fit, x_held = inputs(*fit_blocks), inputs(*held_blocks)
                xx, yy, ww = self._doubled(x_fit, labels[fit_idx])
                for c in self.c_grid:
                    model = self._base(c).fit(xx, yy, sample_weight=ww)
                    p = model.predict_proba(x_held)[:, 1]
                    key = (c, dims)
                    scores[key] = scores.get(key, 0.0) + _soft_log_loss(
                        p, labels[held_idx]) * len(held_idx)
        return min(scores, key=lambda k: (scores[k], -k[0]))

    # ----------------------------------------------------------------- predict
    def predict_outcome_rows(self, rows: Sequence[dict[str, Any]]) -> np.ndarray:
        """Predicted accuracy of each row's configuration on its query."""
        from threadpoolctl import threadpool_limits

        out = np.zeros(len(rows))
        by_kind: dict[str, list[int]] = {}
        for i, r in enumerate(rows):
            by_kind.setdefault(row_features(r).answer_kind, []).append(i)
        for kind, idx in by_kind.items():
            if kind not in self.parts:
                raise TidalConfigError(f"no model for steps of kind {kind!r}; fitted on "
                                       f"{sorted(self.parts)}.")
            inputs, model, _, _ = self.parts[kind]
            with threadpool_limits(1):
                out[idx] = model.predict_proba(inputs(*self._blocks([rows[i] for i in idx])))[:, 1]
        return out

    def chosen(self) -> dict[str, dict[str, float]]:
        """Per kind, the regularisation and PCA dimension the fit chose."""
        return {k: {"C": c, "pca_dims": d} for k, (_, _, c, d) in self.parts.items()}
