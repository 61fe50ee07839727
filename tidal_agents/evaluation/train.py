"""Train the accuracy predictor on collected outcomes; report Brier score and reliability.

The split is by *query* (every configuration of one query lands on the same
side), deterministic from a seed and the query id, so `bench allocation`
evaluates on exactly the queries the shipped predictor never saw.

Held-out Brier scores are reported for the trained predictor and for two
references: the per-configuration training mean (what a predictor that
ignores the query can do) and the closed-form `PriorAccuracyPredictor`.

The estimator is chosen by cross-validation on the *training* split only
(`cross_validate`, ``--estimator select``): query-grouped folds, pooled
out-of-fold predictions, scored by the allocation benchmark's own figure (gap
closed at matched tokens) and, among ties (half a query), by Brier. The held-out split plays
no part in the choice.
"""

from __future__ import annotations

import argparse
import functools
import glob
import hashlib
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from tidal_agents.allocation.features import StepFeatures
from tidal_agents.allocation.predictor import (
    DEFAULT_PREDICTOR_FILE,
    PriorAccuracyPredictor,
    SklearnAccuracyPredictor,
    TrainingRow,
)
from tidal_agents.errors import TidalConfigError
from tidal_agents.evaluation.collect import read_rows
from tidal_agents.evaluation.figures import allocation_figures, outcome_matrices
from tidal_agents.evaluation.step_tasks import query_group
from tidal_agents.types import StrategyConfig

DEFAULT_TEST_FRACTION = 0.3
REPORT_FILE = "accuracy_predictor.json"
#: the estimators `--estimator select` compares by cross-validation on the training split
ESTIMATORS: tuple[str, ...] = ("logistic", "hgb", "logistic-per-kind", "hgb-per-kind")
#: the suffix of an estimator fitted once per kind of step (`SklearnAccuracyPredictor.per_kind`)
PER_KIND = "-per-kind"
#: the estimator used when none is named (the choice of `select` on the committed outcomes)
DEFAULT_ESTIMATOR = "logistic-per-kind"


def data_dir() -> Path:
    """The package's data folder (shipped predictor and outcomes)."""
    return Path(str(resources.files("tidal_agents").joinpath("data")))


def default_outcome_files() -> list[Path]:
    return sorted(Path(p) for p in glob.glob(str(data_dir() / "outcomes-*.jsonl.gz")))


def load_outcomes(paths: Iterable[Path] | None = None) -> list[dict[str, Any]]:
    """Rows of every outcome file (default: the committed ones in tidal_agents/data/)."""
    files = list(paths) if paths is not None else default_outcome_files()
    if not files:
        raise TidalConfigError(
            f"no outcome files given and none shipped in {data_dir()}; run "
            "`tidal-agents collect` first."
        )
    rows: list[dict[str, Any]] = []
    for f in files:
        if not Path(f).exists():
            raise TidalConfigError(f"outcome file {f} does not exist.")
        rows.extend(read_rows(Path(f)))
    if not rows:
        raise TidalConfigError(f"outcome files {[str(f) for f in files]} hold no rows.")
    return rows


def is_test_query(query_id: str, test_fraction: float = DEFAULT_TEST_FRACTION,
                  seed: int = 0) -> bool:
    """Deterministic query-level split: hash(seed, group) below `test_fraction` (the
    steps of one agent task share a group: `step_tasks.query_group`)."""
    if not 0 < test_fraction < 1:
        raise TidalConfigError(f"test_fraction={test_fraction}: allowed is 0 < f < 1.")
    h = hashlib.sha256(f"{seed}:{query_group(query_id)}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64 < test_fraction


def split_rows(
    rows: Sequence[dict[str, Any]], test_fraction: float = DEFAULT_TEST_FRACTION, seed: int = 0
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    train: list[dict[str, Any]] = []
    test: list[dict[str, Any]] = []
    for r in rows:
        (test if is_test_query(r["query_id"], test_fraction, seed) else train).append(r)
    if not train or not test:
        raise TidalConfigError(
            f"the split left {len(train)} training and {len(test)} test rows; collect more queries."
        )
    return train, test


def row_config(row: dict[str, Any]) -> StrategyConfig:
    """The StrategyConfig an outcome row measured."""
    selector: Any = row["selector"] if row["strategy"] == "best_of_n" else "first"
    return StrategyConfig(
        strategy=row["strategy"], n=int(row["n"]), selector=selector,
        max_tokens=int(row["max_tokens"]), temperature=float(row["temperature"]),
    )


def row_features(row: dict[str, Any]) -> StepFeatures:
    """Step features as the controller saw them: the row's recorded ``features`` (rows
    collected through the chat model's step path), else those of its question as a
    math step (older outcome files)."""
    recorded = row.get("features")
    if recorded:
        return _recorded_features(tuple(sorted(recorded.items())))
    return _text_features(row["question"], int(row["prompt_tokens"]))


@functools.lru_cache(maxsize=8192)
def _recorded_features(items: tuple[tuple[str, Any], ...]) -> StepFeatures:
    return StepFeatures(**dict(items))


@functools.lru_cache(maxsize=4096)
def _text_features(question: str, prompt_tokens: int) -> StepFeatures:
    """`StepFeatures` (frozen) of one question, cached: cross-validation refits often."""
    return StepFeatures.from_text(question, prompt_tokens=prompt_tokens, answer_kind="math")


def training_rows(rows: Sequence[dict[str, Any]]) -> list[TrainingRow]:
    return [TrainingRow(row_features(r), row_config(r), float(r["soft_label"])) for r in rows]


#: seed -> an unfitted predictor, in place of a named estimator (e.g. one over features
#: the outcome rows carry besides `StepFeatures`, `evaluation.probe.ProbePredictor`)
PredictorFactory = Callable[[int], Any]


def fit_predictor(predictor: Any, rows: Sequence[dict[str, Any]]) -> Any:
    """Fit `predictor` on outcome rows: one that reads the rows itself
    (``fit_outcome_rows``) gets them as they are, others their `TrainingRow`s."""
    if hasattr(predictor, "fit_outcome_rows"):
        return predictor.fit_outcome_rows(rows)
    return predictor.fit(training_rows(rows))


def predict_rows(predictor: Any, rows: Sequence[dict[str, Any]]) -> np.ndarray:
    """Predicted accuracy of each row's configuration on its query (batched per query)."""
    if hasattr(predictor, "predict_outcome_rows"):
        return np.asarray(predictor.predict_outcome_rows(rows), dtype=np.float64)
    by_query: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_query.setdefault(r["query_id"], []).append(i)
    out = np.zeros(len(rows))
    for idx in by_query.values():
        feats = row_features(rows[idx[0]])
        preds = predictor.predict(feats, [row_config(rows[i]) for i in idx])
        out[idx] = preds
    return out


def predict_matrix(
    predictor: Any, by: dict[tuple[str, str], dict[str, Any]], qids: Sequence[str],
    configs: Sequence[str],
) -> np.ndarray:
    """len(qids) x len(configs) predicted accuracies; NaN where a query has no row for a
    configuration (it does not run there)."""
    cells = [(i, j) for i, q in enumerate(qids) for j, c in enumerate(configs) if (q, c) in by]
    out = np.full((len(qids), len(configs)), np.nan)
    if cells:
        pred = predict_rows(predictor, [by[(qids[i], configs[j])] for i, j in cells])
        rows_i, cols_j = zip(*cells, strict=True)
        out[list(rows_i), list(cols_j)] = pred
    return out


def make_predictor(estimator: str, seed: int = 0) -> SklearnAccuracyPredictor:
    """An unfitted predictor of one of `ESTIMATORS`."""
    if estimator not in ESTIMATORS:
        raise TidalConfigError(f"estimator={estimator!r}: allowed are {', '.join(ESTIMATORS)}.")
    base = estimator.removesuffix(PER_KIND)
    return SklearnAccuracyPredictor(estimator=base, random_state=seed,  # type: ignore[arg-type]
                                    per_kind=estimator.endswith(PER_KIND))


def brier(pred: np.ndarray, label: np.ndarray) -> float:
    return float(np.mean((np.asarray(pred) - np.asarray(label)) ** 2))


def reliability(pred: np.ndarray, label: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """Per equal-width bin of predictions: count, mean prediction, mean soft label."""
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(pred, edges[1:-1]), 0, bins - 1)
    table = []
    for b in range(bins):
        m = which == b
        if m.any():
            table.append({"lo": float(edges[b]), "hi": float(edges[b + 1]),
                          "count": int(m.sum()), "predicted": float(pred[m].mean()),
                          "observed": float(label[m].mean())})
    return table


def save_reliability_plot(table: list[dict[str, float]], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    xs = [t["predicted"] for t in table]
    ys = [t["observed"] for t in table]
    sizes = [12 + 140 * t["count"] / max(1, max(t2["count"] for t2 in table)) for t in table]
    ax.plot(xs, ys, color="C0", lw=1)
    ax.scatter(xs, ys, s=sizes, color="C0", label="held-out bins (size = rows)")
    ax.set_xlabel("predicted accuracy")
    ax.set_ylabel("observed soft label (mean)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def cv_fold(query_id: str, folds: int, repeat: int, seed: int = 0) -> int:
    """Deterministic fold of a query in cross-validation repeat `repeat` (by its
    `step_tasks.query_group`)."""
    h = hashlib.sha256(f"cv{seed}:{repeat}:{query_group(query_id)}".encode()).digest()
    return int.from_bytes(h[:8], "big") % folds


def cross_validate(
    rows: Sequence[dict[str, Any]],
    estimator: str,
    folds: int = 5,
    repeats: int = 3,
    seed: int = 0,
    keep_predictions: bool = False,
    predictor_factory: PredictorFactory | None = None,
) -> dict[str, Any]:
    """Query-grouped k-fold cross-validation of one estimator on `rows` (a training split).

    Each repeat predicts every query with a model that never saw it (pooled
    out-of-fold predictions) and scores them as `bench allocation` scores the
    held-out split: Brier, and static best / oracle / adaptive at matched
    tokens and latency (costs: the per-configuration means of `rows`). Returns
    the means over repeats and each repeat's gap closed at matched tokens.
    `keep_predictions` adds ``_oof``: {"qids", "configs", "acc_hat": one
    Q x C array per repeat} (not JSON; for choices made on these predictions).
    `predictor_factory` (seed -> unfitted predictor) replaces `make_predictor`;
    `estimator` then only names it.
    """
    if not isinstance(folds, int) or folds < 2 or not isinstance(repeats, int) or repeats < 1:
        raise TidalConfigError(f"folds={folds!r}, repeats={repeats!r}: allowed are folds >= 2, "
                               "repeats >= 1.")
    qids, names, labels, tokens, latency = outcome_matrices(rows)
    if len(qids) < 2 * folds:
        raise TidalConfigError(f"{len(qids)} complete queries; cross-validation with "
                               f"folds={folds} needs at least {2 * folds}.")
    by = {(r["query_id"], r["config"]): r for r in rows}
    briers: list[float] = []
    figures: list[dict[str, Any]] = []
    oof: list[np.ndarray] = []
    runs = ~np.isnan(labels)
    for rep in range(repeats):
        fold_of = np.array([cv_fold(q, folds, rep, seed) for q in qids])
        acc_hat = np.full_like(labels, np.nan)
        for k in range(folds):
            held = np.flatnonzero(fold_of == k)
            if len(held) == 0:
                continue
            fit_rows = [by[(q, c)] for i, q in enumerate(qids) if fold_of[i] != k
                        for c in names if (q, c) in by]
            pred = (predictor_factory or functools.partial(make_predictor, estimator))(seed)
            fit_predictor(pred, fit_rows)
            acc_hat[held] = predict_matrix(pred, by, [qids[i] for i in held], names)
        oof.append(acc_hat)
        briers.append(brier(acc_hat[runs], labels[runs]))
        fig = allocation_figures(names, labels, tokens, latency, acc_hat,
                                 np.nanmean(tokens, axis=0), np.nanmean(latency, axis=0))
        fig.pop("_arrays")
        figures.append(fig)

    def mean_of(key: str, field: str | None = None) -> float | None:
        vals = [f[key] if field is None else (f[key] or {}).get(field) for f in figures]
        numbers = [float(v) for v in vals if v is not None]
        return float(np.mean(numbers)) if len(numbers) == len(vals) else None

    result: dict[str, Any] = {
        "estimator": estimator,
        "folds": folds,
        "repeats": repeats,
        "queries": len(qids),
        "brier": float(np.mean(briers)),
        "static_best": figures[0]["static_best"],
        "oracle_accuracy": figures[0]["oracle"]["accuracy"],
        "adaptive_accuracy_at_matched_tokens": mean_of("adaptive_at_matched_tokens", "accuracy"),
        "adaptive_tokens_at_matched_tokens": mean_of("adaptive_at_matched_tokens", "tokens"),
        "gap_closed_expected_oracle_at_matched_tokens":
            mean_of("gap_closed_expected_oracle_at_matched_tokens"),
        "gap_closed_expected_oracle_at_matched_latency":
            mean_of("gap_closed_expected_oracle_at_matched_latency"),
        "gap_closed_expected_oracle_at_matched_tokens_each": [
            None if (g := f["gap_closed_expected_oracle_at_matched_tokens"]) is None else float(g)
            for f in figures
        ],
    }
    if keep_predictions:
        result["_oof"] = {"qids": qids, "configs": names, "acc_hat": oof}
    return result


def select_estimator(
    rows: Sequence[dict[str, Any]], candidates: Sequence[str] = ESTIMATORS, seed: int = 0,
    folds: int = 5, repeats: int = 3, keep_predictions: bool = False,
) -> tuple[str, list[dict[str, Any]]]:
    """The candidate with the highest cross-validated gap closed at matched tokens.

    Candidates whose adaptive accuracy at matched tokens is within half a
    query's worth (0.5 / queries) of the best count as tied; the lower
    cross-validated Brier score breaks the tie. `rows` must be the training split.
    """
    results = [cross_validate(rows, c, folds, repeats, seed, keep_predictions)
               for c in candidates]
    tie = 0.5 / results[0]["queries"]

    def accuracy(r: dict[str, Any]) -> float:
        a = r["adaptive_accuracy_at_matched_tokens"]
        return -np.inf if a is None else float(a)

    best = max(accuracy(r) for r in results)
    contenders = [r for r in results if accuracy(r) >= best - tie]
    return min(contenders, key=lambda r: r["brier"])["estimator"], results


def fit_recipe(
    rows: Sequence[dict[str, Any]],
    estimator: str = DEFAULT_ESTIMATOR,
    seed: int = 0,
    keep_cv: bool = False,
    folds: int = 5,
    repeats: int = 3,
    predictor_factory: PredictorFactory | None = None,
) -> tuple[Any, str, list[dict[str, Any]] | None]:
    """The shipped model's recipe on `rows` (all of them training rows): (predictor, estimator, CV).

    `estimator` "select" chooses among `ESTIMATORS` by query-grouped
    cross-validation on `rows` (`select_estimator`); the CV table is returned.
    A named estimator is fitted directly (no CV) unless `keep_cv`, which also
    cross-validates it and keeps every CV result's out-of-fold predictions
    (``_oof``, see `cross_validate`) for choices made on `rows` only.
    `predictor_factory` fits that predictor instead, `estimator` being its name.
    """
    cv_table: list[dict[str, Any]] | None = None
    if predictor_factory is not None:
        if keep_cv:
            cv_table = [cross_validate(rows, estimator, folds, repeats, seed,
                                       keep_predictions=True,
                                       predictor_factory=predictor_factory)]
        return fit_predictor(predictor_factory(seed), rows), estimator, cv_table
    if estimator == "select":
        estimator, cv_table = select_estimator(rows, seed=seed, folds=folds, repeats=repeats,
                                               keep_predictions=keep_cv)
    elif estimator not in ESTIMATORS:
        raise TidalConfigError(
            f"estimator={estimator!r}: allowed are {', '.join(ESTIMATORS)}, 'select'."
        )
    elif keep_cv:
        cv_table = [cross_validate(rows, estimator, folds, repeats, seed, keep_predictions=True)]
    predictor = fit_predictor(make_predictor(estimator, seed), rows)
    return predictor, estimator, cv_table


def train(
    rows: Sequence[dict[str, Any]],
    test_fraction: float = DEFAULT_TEST_FRACTION,
    seed: int = 0,
    estimator: str = DEFAULT_ESTIMATOR,
) -> tuple[Any, dict[str, Any]]:
    """Fit on the training split; evaluate on the held-out split. Returns (predictor, report).

    `estimator` "select" picks among `ESTIMATORS` by cross-validation on the
    training split (`select_estimator`); the report then carries the CV table.
    """
    train_rows, test_rows = split_rows(rows, test_fraction, seed)
    predictor, estimator, cv_table = fit_recipe(train_rows, estimator, seed)
    label = np.array([r["soft_label"] for r in test_rows], dtype=float)
    pred = predict_rows(predictor, test_rows)
    prior = predict_rows(PriorAccuracyPredictor(), test_rows)
    means: dict[str, list[float]] = {}
    for r in train_rows:
        means.setdefault(r["config"], []).append(float(r["soft_label"]))
    per_config = np.array([np.mean(means.get(r["config"], [0.0])) for r in test_rows])
    report = {
        "train_queries": len({r["query_id"] for r in train_rows}),
        "test_queries": len({r["query_id"] for r in test_rows}),
        "train_rows": len(train_rows),
        "test_rows": len(test_rows),
        "test_fraction": test_fraction,
        "split_seed": seed,
        "estimator": estimator,
        #: the configurations the predictor has seen; others are extrapolation
        "configs": sorted({r["config"] for r in train_rows}),
        #: per step kind, the configurations it has seen (what `predictor_for` trusts)
        "coverage": predictor.coverage,
        #: per kind, whether the model is Platt-calibrated (too few right or wrong
        #: outcomes: not)
        "calibrated": ({k: p.calibrated for k, p in predictor.parts.items()}
                       if predictor.per_kind else predictor.calibrated),
        "tasks": sorted({r.get("task", "?") for r in train_rows}),
        "brier_trained": brier(pred, label),
        "brier_per_config_mean": brier(per_config, label),
        "brier_prior": brier(prior, label),
        "brier_constant": brier(np.full_like(label, label.mean()), label),
        "mean_soft_label_test": float(label.mean()),
        "brier_by_kind": _brier_by_kind(train_rows, test_rows, pred, label),
        "reliability": reliability(pred, label),
    }
    if cv_table is not None:
        report["selected_by"] = ("cross-validation on the training split: highest gap closed "
                                 "at matched tokens, ties (half a query) broken by Brier")
        report["cv"] = cv_table
    return predictor, report


def _brier_by_kind(
    train_rows: Sequence[dict[str, Any]], test_rows: Sequence[dict[str, Any]],
    pred: np.ndarray, label: np.ndarray,
) -> dict[str, dict[str, float]]:
    """Held-out Brier per kind of step: trained, and the training mean per (kind,
    configuration) (a query-blind predictor that knows the kind)."""
    def kind(r: dict[str, Any]) -> str:
        return str(row_features(r).answer_kind)

    means: dict[tuple[str, str], list[float]] = {}
    for r in train_rows:
        means.setdefault((kind(r), r["config"]), []).append(float(r["soft_label"]))
    kinds = np.array([kind(r) for r in test_rows])
    blind = np.array([np.mean(means.get((kind(r), r["config"]), [0.0])) for r in test_rows])
    return {k: {"rows": int((kinds == k).sum()), "trained": brier(pred[kinds == k],
                                                                   label[kinds == k]),
                "kind_config_mean": brier(blind[kinds == k], label[kinds == k])}
            for k in sorted(set(kinds))}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """`tidal-agents train`'s options."""
    p.add_argument("--outcomes", type=Path, nargs="*", default=None,
                   help="outcome JSONL(.gz) files (default: tidal_agents/data/outcomes-*)")
    p.add_argument("--test-fraction", type=float, default=DEFAULT_TEST_FRACTION)
    p.add_argument("--seed", type=int, default=0, help="split seed")
    p.add_argument("--estimator", choices=[*ESTIMATORS, "select"], default="select",
                   help="'select': choose by cross-validation on the training split")
    p.add_argument("--model-out", type=Path, default=None,
                   help="where to save the predictor (default: tidal_agents/data/)")
    p.add_argument("--plot", type=Path, default=Path("docs/figures/reliability.png"))


def run(args: argparse.Namespace) -> int:
    """`tidal-agents train` with parsed options: fit, report held-out Brier, save model + plot."""
    rows = load_outcomes(args.outcomes)
    predictor, report = train(rows, args.test_fraction, args.seed, args.estimator)
    model_out = args.model_out or data_dir() / DEFAULT_PREDICTOR_FILE
    predictor.save(model_out)
    report["model"] = model_out.name
    report["outcome_files"] = [Path(f).name for f in (args.outcomes or default_outcome_files())]
    model_out.with_name(REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    title = (f"held-out reliability (Brier {report['brier_trained']:.3f}; "
             f"per-config mean {report['brier_per_config_mean']:.3f})")
    save_reliability_plot(report["reliability"], args.plot, title)
    report["plot"] = str(args.plot)
    print(json.dumps({k: v for k, v in report.items() if k not in ("reliability", "cv")},
                     indent=2))
    for r in report.get("cv", []):
        print(f"cv {r['estimator']}: brier {r['brier']:.4f}, gap closed at matched tokens "
              f"{r['gap_closed_expected_oracle_at_matched_tokens']}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`tidal-agents train`: fit, report held-out Brier, save model + reliability plot."""
    p = argparse.ArgumentParser(prog="tidal-agents train", description=__doc__.splitlines()[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
