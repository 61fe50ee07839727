"""`tidal-agents bench allocation`: adaptive allocation vs static configurations vs oracle.

Offline, from the committed outcomes (``tidal_agents/data/outcomes-*.jsonl.gz``),
on the held-out queries of the split the shipped predictor was trained with
(no engine needed):

* static: every configuration applied to every held-out query;
* adaptive (the paper's rule): per query, the configuration maximising
  ``acc_hat - lambda_T * tokens_hat - lambda_L * latency_hat``, with
  ``acc_hat`` from the trained accuracy predictor and ``tokens_hat`` /
  ``latency_hat`` the per-configuration means of the *training* split (the
  paper's cost predictors), swept over a grid of (lambda_T, lambda_L);
* oracle: per query, the configuration with the highest soft label, the
  cheapest (tokens, then latency) among ties.

Accuracy is the mean soft label of the chosen configurations; tokens and
latency are the chosen configurations' recorded costs on those queries.
"Matched" means: the most accurate adaptive point whose mean latency (or
tokens) is not above the best static configuration's
(`tidal_agents.evaluation.figures`).

* cross-validated (``cross_validated``, the headline,
  `tidal_agents.evaluation.cross_validated`): the static best / adaptive /
  oracle comparison over *all* queries (steps of every kind), 5 query-grouped
  folds x 3 repeats, everything (the shipped recipe's predictor, cost means,
  static best, lambda) fitted on the other folds; pooled out-of-fold decisions,
  bootstrap 95% intervals over queries. ``adaptive`` is the cheapest lambda
  (in output tokens) whose training-fold accuracy is within 0.01 of the
  training static best's; ``tokens_saved_at_matched_accuracy`` /
  ``latency_saved_at_matched_accuracy`` are 1 - its output tokens / latency
  over the static best's (null when its held-out accuracy is more than 0.01
  below the static best's); ``gap_closed_expected_oracle`` the fraction of the
  static-to-oracle gap it closes; ``adaptive_minus_static_best`` the paired
  bootstrap difference. A static policy is one configuration for every step,
  so it is chosen among the configurations every step can run (no beam: the
  chat model never runs beam under a tool grammar).

Tokens are generated (output) tokens.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tidal_agents.allocation.predictor import SklearnAccuracyPredictor
from tidal_agents.errors import TidalConfigError
from tidal_agents.evaluation.cross_validated import cross_validated_allocation
from tidal_agents.evaluation.figures import allocation_figures, outcome_matrices, pareto_front
from tidal_agents.evaluation.train import (
    DEFAULT_TEST_FRACTION,
    REPORT_FILE,
    data_dir,
    load_outcomes,
    predict_matrix,
    split_rows,
    train,
)
from tidal_agents.paths import home_dir


def evaluate(
    rows: Sequence[dict[str, Any]],
    predictor: Any,
    test_fraction: float,
    split_seed: int,
    points: int = 30,
) -> dict[str, Any]:
    """The held-out split's figures of the benchmark (see the module docstring)."""
    train_rows, test_rows = split_rows(rows, test_fraction, split_seed)
    qids, names, labels, tokens, latency = outcome_matrices(test_rows)
    _, _, _, tr_tokens, tr_latency = outcome_matrices(train_rows, names)
    tokens_hat, latency_hat = np.nanmean(tr_tokens, axis=0), np.nanmean(tr_latency, axis=0)
    # predicted accuracy per (held-out query, config); NaN where the config does not run
    by = {(r["query_id"], r["config"]): r for r in test_rows}
    acc_hat = predict_matrix(predictor, by, qids, names)

    out: dict[str, Any] = {"held_out_queries": len(qids)}
    out.update(allocation_figures(names, labels, tokens, latency, acc_hat, tokens_hat,
                                  latency_hat, points))
    return out


def _plots(
    out_dir: Path, static: np.ndarray, names: list[str], adaptive: np.ndarray,
    oracle: np.ndarray, title: str,
) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for col, label, fname in ((1, "mean tokens per query", "allocation_pareto_tokens.png"),
                              (2, "mean latency per query (s)", "allocation_pareto_latency.png")):
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        front = pareto_front(adaptive, col)
        ax.scatter(adaptive[:, col], adaptive[:, 0], s=6, color="C0", alpha=0.25,
                   label="adaptive (lambda sweep)")
        ax.plot(adaptive[front, col], adaptive[front, 0], color="C0", lw=1.5,
                label="adaptive Pareto front")
        ax.scatter(static[:, col], static[:, 0], color="C1", marker="s", s=28, label="static")
        for (x, y), name in zip(static[:, [col, 0]], names, strict=True):
            ax.annotate(name, (x, y), fontsize=6, xytext=(3, 2), textcoords="offset points")
        ax.scatter([oracle[col]], [oracle[0]], color="C3", marker="*", s=120, label="oracle")
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("accuracy (mean soft label, held out)")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        path = out_dir / fname
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(str(path))
    return paths


def _table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"allocation on {result['held_out_queries']} held-out queries")
    for col in ("policy", "accuracy", "tokens", "latency s"):
        t.add_column(col, justify="left" if col == "policy" else "right")

    def add(policy: str, p: dict[str, float]) -> None:
        t.add_row(policy, f"{p['accuracy']:.3f}", f"{p['tokens']:.0f}", f"{p['latency_s']:.2f}")

    for name, p in result["static"].items():
        add(f"static {name}", p)
    for key in ("adaptive_at_matched_latency", "adaptive_at_matched_tokens"):
        if result.get(key):
            add(key.replace("_", " "), result[key])
    add("oracle", result["oracle"])
    cv = result.get("cross_validated") or {}
    if "adaptive" in cv:
        add(f"CV ({cv['queries']} queries) static best", cv["static_best"])
        add(f"CV ({cv['queries']} queries) adaptive at matched accuracy", cv["adaptive"])
    if "queries" in cv:
        for key in ("static", "adaptive_at_matched_latency", "adaptive_at_matched_tokens",
                    "oracle"):
            add(f"CV ({cv['queries']} queries) {key.replace('_', ' ')}", cv[key])
    Console(stderr=True).print(t)


def _predictor(
    rows: Sequence[dict[str, Any]], outcome_files: Sequence[Path] | None
) -> tuple[Any, float, int, str, str]:
    """(predictor, test fraction, split seed, where the predictor comes from, estimator).

    The shipped predictor with the split it was trained on, for the committed
    outcomes; else one trained here on the training split of `rows`.
    """
    report_path = data_dir() / REPORT_FILE
    if not outcome_files and report_path.exists():
        report = json.loads(report_path.read_text())
        return (SklearnAccuracyPredictor.load_default(), float(report["test_fraction"]),
                int(report["split_seed"]),
                "shipped (tidal_agents/data), trained on the same training split",
                str(report["estimator"]))
    fraction, seed = DEFAULT_TEST_FRACTION, 0
    split_rows(rows, fraction, seed)  # fails clearly on a degenerate split
    predictor, report = train(rows, fraction, seed, estimator="select")
    return (predictor, fraction, seed,
            "trained in this run on the training split (estimator chosen by CV on it)",
            str(report["estimator"]))


def run(config: Any = None, args: Any = None) -> dict[str, Any]:
    """Entry point of `tidal-agents bench allocation` (the engine config is not used)."""
    t0 = time.perf_counter()
    outcome_files = getattr(args, "outcomes", None)
    rows = load_outcomes(outcome_files)
    predictor, fraction, seed, source, estimator = _predictor(rows, outcome_files)
    points = 12 if getattr(args, "quick", False) else 30
    result = evaluate(rows, predictor, fraction, seed, points=points)
    try:
        # the shipped recipe: its estimator, refitted inside every training fold
        cv = cross_validated_allocation(rows, estimator=estimator, points=points)
        cv.pop("_folds")
    except TidalConfigError as e:
        cv = {"unavailable": str(e)}
    result["cross_validated"] = cv
    static, names, adaptive, oracle = result.pop("_arrays")
    plot_dir = Path(getattr(args, "plot_dir", None) or home_dir() / "bench" / "allocation")
    title = (f"{len(names)} configurations, {result['held_out_queries']} held-out queries, "
             f"{len(adaptive)} lambda pairs")
    result["plots"] = _plots(plot_dir, static, names, adaptive, oracle, title)
    result["predictor"] = source
    result["split"] = {"test_fraction": fraction, "seed": seed}
    result["bench_wall_s"] = time.perf_counter() - t0
    _table(result)
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`tidal-agents bench allocation`'s options."""
    parser.add_argument("--outcomes", type=Path, nargs="*", default=None,
                        help="outcome JSONL(.gz) files (default: the committed outcomes, "
                        "with the shipped predictor)")
    parser.add_argument("--plot-dir", type=Path, default=None,
                        help="where to save the Pareto plots (default: under $TIDAL_AGENTS_HOME)")
    parser.add_argument("--quick", action="store_true",
                        help="a coarser lambda grid (12 x 12 instead of 30 x 30)")


def main(argv: list[str] | None = None) -> int:
    """Standalone: ``python -m tidal_agents.bench.allocation [--outcomes F ...] [--plot-dir D]``."""
    p = argparse.ArgumentParser(prog="bench allocation")
    add_arguments(p)
    args = p.parse_args(argv)
    print(json.dumps(run(None, args), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
