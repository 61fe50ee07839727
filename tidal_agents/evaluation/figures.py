"""Allocation figures of per-(query, configuration) outcomes: static, adaptive, oracle.

Pure array code shared by the predictor's cross-validation (`evaluation.train`),
the cross-validated figure (`evaluation.cross_validated`) and `bench allocation`:

* static: every configuration applied to every query;
* adaptive: per query, the configuration maximising
  ``acc_hat - lambda_T * tokens_hat - lambda_L * latency_hat``, swept over a
  grid of (lambda_T, lambda_L);
* oracle: per query, the configuration with the highest soft label, the
  cheapest (tokens, then latency) among ties.

Accuracy is the mean soft label of the chosen configurations; tokens and
latency are the chosen configurations' recorded costs on those queries.
"Matched" means: the most accurate adaptive point whose mean latency (or
tokens) is not above the best static configuration's.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from tidal_agents.errors import TidalConfigError

#: the matched comparisons: (key suffix, column of the cost in a point array)
MATCHED_COSTS: tuple[tuple[str, int], ...] = (("latency", 2), ("tokens", 1))


class OutcomeMatrices(NamedTuple):
    """Outcomes of the queries that have a row for every configuration, as Q x C arrays."""

    qids: list[str]
    configs: list[str]
    labels: np.ndarray
    tokens: np.ndarray
    latency: np.ndarray


def accuracy_cost_point(acc: float, tokens: float, latency: float) -> dict[str, float]:
    """One policy's figures as the bench's JSON reports them."""
    return {"accuracy": float(acc), "tokens": float(tokens), "latency_s": float(latency)}


def config_order(name: str) -> tuple[int, int, str]:
    """Sort key of configuration names: greedy, single, best-of-N by N, then beams by width."""
    if name == "greedy":
        return (0, 0, name)
    if name == "single":
        return (1, 1, name)
    m = re.match(r"(bo|beam)(\d+)", name)
    return (2 if m and m.group(1) == "bo" else 3, int(m.group(2)) if m else 0, name)


def outcome_matrices(
    rows: Sequence[dict[str, Any]], configs: Sequence[str] | None = None
) -> OutcomeMatrices:
    """(query ids, config names, soft labels, tokens, latency) as Q x C arrays.

    A configuration a query has no row for (beam on a tool step: the chat model
    never runs it there) is NaN in every array; the figures below never choose it
    there. Tokens are generated (output) tokens when rows record them
    (``generated_tokens``), else ``tokens``. Queries with no row for any of
    `configs` are dropped.
    """
    by_q: dict[str, dict[str, dict[str, Any]]] = {}
    for r in rows:
        by_q.setdefault(r["query_id"], {})[r["config"]] = r
    if configs is None:
        every = set().union(*(set(v) for v in by_q.values())) if by_q else set()
        configs = sorted(every, key=config_order)
    if not configs:
        raise TidalConfigError("no configuration is present for every query.")
    qids = sorted(q for q, v in by_q.items() if any(c in v for c in configs))
    if not qids:
        raise TidalConfigError("no query has a row for every configuration.")

    def value(row: dict[str, Any] | None, key: str) -> float:
        if row is None:
            return np.nan
        if key == "tokens" and "generated_tokens" in row:
            key = "generated_tokens"
        return float(row[key])

    def column(key: str) -> np.ndarray:
        return np.array([[value(by_q[q].get(c), key) for c in configs] for q in qids])

    return OutcomeMatrices(qids, list(configs), column("soft_label"), column("tokens"),
                           column("latency_s"))


def available(labels: np.ndarray) -> np.ndarray:
    """Q x C: whether the configuration runs on the query (has an outcome)."""
    return np.asarray(~np.isnan(labels))


def static_points(labels: np.ndarray, tokens: np.ndarray, latency: np.ndarray) -> np.ndarray:
    """(C x 3) accuracy, mean tokens, mean latency of every configuration applied to all
    queries (a configuration that does not run on every query: over those it runs on)."""
    with np.errstate(invalid="ignore"):
        return np.stack([np.nanmean(labels, axis=0), np.nanmean(tokens, axis=0),
                         np.nanmean(latency, axis=0)], axis=1)


def static_best_index(static: np.ndarray, runs_everywhere: np.ndarray | None = None) -> int:
    """The most accurate configuration of `static_points`, the fewest tokens among ties,
    among those that run on every query (`runs_everywhere`, C booleans; default all):
    a fixed strategy must serve every step."""
    eligible = np.ones(len(static), bool) if runs_everywhere is None else runs_everywhere
    if not eligible.any():
        raise TidalConfigError("no configuration runs on every query: no static policy.")
    acc = np.where(eligible, static[:, 0], -np.inf)
    return int(np.lexsort((static[:, 1], -acc))[0])


def oracle_choice(labels: np.ndarray, tokens: np.ndarray, latency: np.ndarray) -> np.ndarray:
    """Per query: highest soft label; among ties, fewest tokens, then lowest latency."""
    filled = np.where(np.isnan(labels), -np.inf, labels)
    best = filled.max(axis=1, keepdims=True)
    tied = np.isclose(filled, best)
    key = np.where(tied, tokens + 1e-6 * latency, np.inf)
    return key.argmin(axis=1)


def sweep(
    acc_hat: np.ndarray,
    tokens_hat: np.ndarray,
    latency_hat: np.ndarray,
    lambdas_t: np.ndarray,
    lambdas_l: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Choices (P x Q) of the utility rule for every (lambda_T, lambda_L) pair (P of them)."""
    lt, ll = np.meshgrid(lambdas_t, lambdas_l, indexing="ij")
    lt, ll = lt.ravel(), ll.ravel()
    cost = lt[:, None] * tokens_hat[None, :] + ll[:, None] * latency_hat[None, :]  # P x C
    utility = acc_hat[None, :, :] - cost[:, None, :]  # P x Q x C
    # NaN: the configuration does not run on the query (see `outcome_matrices`)
    utility = np.where(np.isnan(utility), -np.inf, utility)
    return utility.argmax(axis=2), np.stack([lt, ll], axis=1)


def evaluate_choices(
    choice: np.ndarray, labels: np.ndarray, tokens: np.ndarray, latency: np.ndarray
) -> np.ndarray:
    """(P x 3) accuracy, mean tokens, mean latency of each row of choices (P x Q)."""
    q = np.arange(labels.shape[0])
    return np.stack(
        [labels[q, choice].mean(axis=-1), tokens[q, choice].mean(axis=-1),
         latency[q, choice].mean(axis=-1)], axis=-1
    )


def pareto_front(points: np.ndarray, cost_col: int) -> np.ndarray:
    """Indices of points not dominated in (higher accuracy, lower cost), sorted by cost."""
    order = np.lexsort((-points[:, 0], points[:, cost_col]))
    front, best = [], -np.inf
    for i in order:
        if points[i, 0] > best + 1e-12:
            front.append(i)
            best = points[i, 0]
    return np.array(front, dtype=int)


def matched(points: np.ndarray, cost_col: int, budget: float) -> int | None:
    """The most accurate point whose cost is within `budget` (cheapest among ties)."""
    ok = np.where(points[:, cost_col] <= budget * (1 + 1e-9))[0]
    if len(ok) == 0:
        return None
    best = points[ok, 0].max()
    tied = ok[np.isclose(points[ok, 0], best)]
    return int(tied[points[tied, cost_col].argmin()])


def gap_closed(adaptive: float, static: float, oracle: float) -> float | None:
    """The fraction of the static-to-oracle accuracy gap the adaptive policy closes."""
    return (adaptive - static) / (oracle - static) if oracle - static > 1e-12 else None


def lambda_grid(
    tokens_hat: np.ndarray, latency_hat: np.ndarray, points: int
) -> tuple[np.ndarray, np.ndarray]:
    """(lambda_T, lambda_L) values in "accuracy per unit of cost", spanning the cost ranges."""
    lam_t = np.concatenate([[0.0], np.geomspace(1e-3, 10, points - 1) / np.nanmax(tokens_hat)])
    lam_l = np.concatenate([[0.0], np.geomspace(1e-3, 10, points - 1) / np.nanmax(latency_hat)])
    return lam_t, lam_l


def allocation_figures(
    names: Sequence[str],
    labels: np.ndarray,
    tokens: np.ndarray,
    latency: np.ndarray,
    acc_hat: np.ndarray,
    tokens_hat: np.ndarray,
    latency_hat: np.ndarray,
    points: int = 30,
) -> dict[str, Any]:
    """Static, oracle and adaptive (lambda sweep) figures of Q x C outcome arrays.

    `acc_hat` (Q x C) is the predicted accuracy of each configuration on each
    query; `tokens_hat` / `latency_hat` (C) the predicted costs. The result has
    the benchmark's keys plus ``_arrays`` (static, names, adaptive, oracle) for plots.
    """
    names = list(names)
    static = static_points(labels, tokens, latency)
    best_i = static_best_index(static, np.asarray(available(labels).all(axis=0)))
    acc_hat = np.where(available(labels), acc_hat, np.nan)
    oc = oracle_choice(labels, tokens, latency)
    oracle = evaluate_choices(oc[None, :], labels, tokens, latency)[0]
    lam_t, lam_l = lambda_grid(tokens_hat, latency_hat, points)
    choices, lambdas = sweep(acc_hat, tokens_hat, latency_hat, lam_t, lam_l)
    adaptive = evaluate_choices(choices, labels, tokens, latency)

    out: dict[str, Any] = {
        "configs": names,
        "static": {n: accuracy_cost_point(*static[i]) for i, n in enumerate(names)},
        "static_best": {"config": names[best_i], **accuracy_cost_point(*static[best_i])},
        "oracle": accuracy_cost_point(*oracle),
    }
    for key, col in MATCHED_COSTS:
        j = matched(adaptive, col, static[best_i, col])
        if j is None:
            out[f"adaptive_at_matched_{key}"] = None
            out[f"gap_closed_expected_oracle_at_matched_{key}"] = None
            continue
        lt, ll = lambdas[j]
        picked = np.bincount(choices[j], minlength=len(names))
        out[f"adaptive_at_matched_{key}"] = {
            **accuracy_cost_point(*adaptive[j]), "lambda_tokens": float(lt),
            "lambda_latency": float(ll),
            "configs_used": {names[k]: int(c) for k, c in enumerate(picked) if c},
        }
        out[f"gap_closed_expected_oracle_at_matched_{key}"] = gap_closed(
            adaptive[j, 0], static[best_i, 0], oracle[0])
    # the sweep's highest accuracy at any cost, for scale
    out["adaptive_max_accuracy"] = float(adaptive[:, 0].max())
    out["_arrays"] = (static, names, adaptive, oracle)
    return out


def paired_difference(
    a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, resamples: int = 2000,
    seed: int = 0
) -> dict[str, Any]:
    """mean(a - b) over paired items, with a bootstrap 95% interval over the items."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape:
        raise TidalConfigError(f"paired samples differ in length: {x.shape} vs {y.shape}.")
    if len(x) == 0:
        return {"difference": None, "ci95": None, "pairs": 0}
    diff = x - y
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(resamples, len(diff)))].mean(axis=1)
    return {
        "difference": float(diff.mean()),
        "ci95": [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))],
        "pairs": int(len(diff)),
    }
