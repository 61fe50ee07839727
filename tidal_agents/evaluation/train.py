"""Train the accuracy predictor on collected outcomes; report Brier score and reliability.

The split is by *query* (every configuration of one query lands on the same
side), deterministic from a seed and the query id, so `bench allocation`
evaluates on exactly the queries the shipped predictor never saw.

Held-out Brier scores are reported for the trained predictor and for two
references: the per-configuration training mean (what a predictor that
ignores the query can do) and the closed-form `PriorAccuracyPredictor`.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import sys
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from tidal_agents.errors import TidalConfigError
from tidal_agents.evaluation.collect import read_rows

DEFAULT_TEST_FRACTION = 0.3
REPORT_FILE = "accuracy_predictor.json"


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
    """Deterministic query-level split: hash(seed, id) below `test_fraction`."""
    if not 0 < test_fraction < 1:
        raise TidalConfigError(f"test_fraction={test_fraction}: allowed is 0 < f < 1.")
    h = hashlib.sha256(f"{seed}:{query_id}".encode()).digest()
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


def row_config(row: dict[str, Any]) -> Any:
    """The StrategyConfig an outcome row measured."""
    from tidal_agents.strategies.base import StrategyConfig

    selector: Any = row["selector"] if row["strategy"] == "best_of_n" else "first"
    return StrategyConfig(
        strategy=row["strategy"], n=int(row["n"]), selector=selector,
        max_tokens=int(row["max_tokens"]), temperature=float(row["temperature"]),
    )


def row_features(row: dict[str, Any]) -> Any:
    """Step features of the row's question, as the controller would see them."""
    from tidal_agents.allocation.features import StepFeatures

    return StepFeatures.from_text(row["question"], prompt_tokens=int(row["prompt_tokens"]),
                                  answer_kind="math")


def training_rows(rows: Sequence[dict[str, Any]]) -> list[Any]:
    from tidal_agents.allocation.predictor import TrainingRow

    return [TrainingRow(row_features(r), row_config(r), float(r["soft_label"])) for r in rows]


def predict_rows(predictor: Any, rows: Sequence[dict[str, Any]]) -> np.ndarray:
    """Predicted accuracy of each row's configuration on its query (batched per query)."""
    by_query: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_query.setdefault(r["query_id"], []).append(i)
    out = np.zeros(len(rows))
    for idx in by_query.values():
        feats = row_features(rows[idx[0]])
        preds = predictor.predict(feats, [row_config(rows[i]) for i in idx])
        out[idx] = preds
    return out


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


def train(
    rows: Sequence[dict[str, Any]],
    test_fraction: float = DEFAULT_TEST_FRACTION,
    seed: int = 0,
    estimator: str = "hgb",
) -> tuple[Any, dict[str, Any]]:
    """Fit on the training split; evaluate on the held-out split. Returns (predictor, report)."""
    from tidal_agents.allocation.predictor import PriorAccuracyPredictor, SklearnAccuracyPredictor

    train_rows, test_rows = split_rows(rows, test_fraction, seed)
    predictor = SklearnAccuracyPredictor(estimator=estimator, random_state=seed)  # type: ignore[arg-type]
    predictor.fit(training_rows(train_rows))
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
        "tasks": sorted({r.get("task", "?") for r in train_rows}),
        "brier_trained": brier(pred, label),
        "brier_per_config_mean": brier(per_config, label),
        "brier_prior": brier(prior, label),
        "brier_constant": brier(np.full_like(label, label.mean()), label),
        "mean_soft_label_test": float(label.mean()),
        "reliability": reliability(pred, label),
    }
    return predictor, report


def main(argv: list[str] | None = None) -> int:
    """`tidal-agents train`: fit, report held-out Brier, save model + reliability plot."""
    p = argparse.ArgumentParser(prog="tidal-agents train", description=__doc__.splitlines()[0])
    p.add_argument("--outcomes", type=Path, nargs="*", default=None,
                   help="outcome JSONL(.gz) files (default: tidal_agents/data/outcomes-*)")
    p.add_argument("--test-fraction", type=float, default=DEFAULT_TEST_FRACTION)
    p.add_argument("--seed", type=int, default=0, help="split seed")
    p.add_argument("--estimator", choices=["hgb", "logistic"], default="hgb")
    p.add_argument("--model-out", type=Path, default=None,
                   help="where to save the predictor (default: tidal_agents/data/)")
    p.add_argument("--plot", type=Path, default=Path("docs/figures/reliability.png"))
    args = p.parse_args(argv)
    from tidal_agents.allocation.predictor import DEFAULT_PREDICTOR_FILE

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
    print(json.dumps({k: v for k, v in report.items() if k != "reliability"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
