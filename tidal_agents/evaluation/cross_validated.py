"""The cross-validated allocation figure: static best vs adaptive vs oracle over *all* queries.

`repeats` times, the queries are dealt into `folds` query-grouped folds
(`outer_folds`). For each held-out fold, everything is fitted on the other
folds only: the predictor (`train.fit_recipe`, the shipped model's recipe;
its own cross-validation, used to choose lambda, runs inside those folds),
the per-configuration cost means (tokens_hat, latency_hat), the static best
(best training accuracy, cheapest among ties) and (lambda_T, lambda_L): the
most accurate pair on the training folds' out-of-fold predictions (mean over
the inner repeats) whose training cost is within the training static best's
(the bench's matching rule, for tokens and for latency). The held-out
fold's queries are then decided once: static best's configuration,
utility rule's argmax, oracle. Decisions are pooled over all queries;
figures are the means over repeats of the pooled figures, with bootstrap 95%
intervals over queries (per-query values averaged over repeats, resamples
paired across policies). Less noisy than one held-out split.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tidal_agents.errors import TidalConfigError
from tidal_agents.evaluation import train
from tidal_agents.evaluation.figures import (
    OutcomeMatrices,
    accuracy_cost_point,
    available,
    evaluate_choices,
    gap_closed,
    lambda_grid,
    matched,
    oracle_choice,
    outcome_matrices,
    paired_difference,
    static_best_index,
    static_points,
    sweep,
)
from tidal_agents.evaluation.step_tasks import query_group
from tidal_agents.step.decide import AllocationSettings

#: folds, repeats, fold seed and bootstrap resamples of the bench's figure
CV_FOLDS, CV_REPEATS, CV_SEED, CV_RESAMPLES = 5, 3, 0, 1000
#: the estimator refitted in every outer fold: the shipped model's. "select" (the
#: shipped model's CV choice between logistic and hgb, redone inside every outer
#: fold) takes ~15 s per fold here, too slow for the bench's budget.
CV_ESTIMATOR = "logistic"
#: the matched comparisons, in the order the figure reports them: (key, cost column)
CV_MATCHED_COSTS: tuple[tuple[str, int], ...] = (("tokens", 1), ("latency", 2))
#: the policies decided out of fold for every query
CV_POLICIES = ("static", "adaptive_at_matched_tokens", "adaptive_at_matched_latency",
               "adaptive_at_matched_accuracy_tokens", "adaptive_at_matched_accuracy_latency",
               "adaptive_at_shipped_defaults")
#: the chat model's default (lambda_tokens, lambda_latency)
SHIPPED_LAMBDAS = (AllocationSettings.lambda_tokens, AllocationSettings.lambda_latency)
RowsByKey = dict[tuple[str, str], dict[str, Any]]


@dataclass(frozen=True)
class CrossValidationSettings:
    """The arguments of `cross_validated_allocation`, passed to its pieces."""

    estimator: str = CV_ESTIMATOR
    folds: int = CV_FOLDS
    repeats: int = CV_REPEATS
    seed: int = CV_SEED
    inner_folds: int = 5
    inner_repeats: int = 3
    points: int = 30
    resamples: int = CV_RESAMPLES
    #: fits the predictor instead of `estimator` (`train.PredictorFactory`)
    predictor_factory: train.PredictorFactory | None = None
    #: seconds every adaptive decision costs before it is made (e.g. a probe's forward
    #: pass), added to the adaptive policies' latency, in lambda's choice as in the figures
    adaptive_overhead_s: float = 0.0


@dataclass(frozen=True)
class TrainingFoldsFit:
    """What one outer fold's decisions are fitted on: the other folds only."""

    predictor: Any
    estimator: str
    #: C x 3 accuracy, mean tokens, mean latency of each configuration on the training folds
    static: np.ndarray
    static_best: int
    #: P x 2 (lambda_T, lambda_L) pairs and P x 3 their training-fold out-of-fold figures
    lambdas: np.ndarray
    points: np.ndarray
    trained_on: list[str]


@dataclass(frozen=True)
class OutOfFoldDecisions:
    """Every query's configuration per repeat and policy, with the folds' bookkeeping."""

    #: policy -> repeats x Q configuration indices
    choice: dict[str, np.ndarray]
    #: repeats x Q fold of each query
    fold_of: np.ndarray
    #: per fold: estimator, static best, lambdas (JSON)
    log: list[dict[str, Any]]
    #: per fold: the query ids the fit saw and the ones it decided
    seen: list[dict[str, Any]]


def outer_folds(qids: Sequence[str], folds: int, repeat: int, seed: int = CV_SEED) -> np.ndarray:
    """Balanced query-grouped folds: a seeded permutation of the query groups (the steps
    of one agent task are one group: `step_tasks.query_group`), dealt round-robin."""
    groups = sorted({query_group(q) for q in qids})
    order = np.random.default_rng([seed, repeat, 6]).permutation(len(groups))
    fold_of_group = dict(zip([groups[i] for i in order], np.arange(len(groups)) % folds,
                             strict=True))
    return np.array([fold_of_group[query_group(q)] for q in qids], dtype=int)


def _ci(values: np.ndarray) -> list[float] | None:
    v = values[np.isfinite(values)]
    return None if len(v) == 0 else [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))]


def _paired_figures(
    static: np.ndarray, adaptive: np.ndarray, oracle: np.ndarray, boot: np.ndarray
) -> dict[str, Any]:
    """Difference and gap closed of per-query accuracies (Q), with bootstrap 95% intervals.

    `boot` (B x Q) holds the resampled query indices, shared by every figure (paired).
    """
    s, a, o = static.mean(), adaptive.mean(), oracle.mean()
    sb, ab, ob = static[boot].mean(axis=1), adaptive[boot].mean(axis=1), oracle[boot].mean(axis=1)
    den = ob - sb
    gap_b = np.where(den > 1e-12, (ab - sb) / np.where(den > 1e-12, den, 1.0), np.nan)
    return {"adaptive_minus_static": float(a - s), "adaptive_minus_static_ci95": _ci(ab - sb),
            "gap_closed_expected_oracle": gap_closed(float(a), float(s), float(o)),
            "gap_closed_expected_oracle_ci95": _ci(gap_b)}


def fit_training_folds(
    m: OutcomeMatrices, by: RowsByKey, fit: np.ndarray, s: CrossValidationSettings
) -> TrainingFoldsFit:
    """Predictor, static best and the lambda sweep's figures, from the queries `fit` only.

    The sweep is scored on the inner cross-validation's out-of-fold predictions
    (mean over the inner repeats), so lambda is chosen on predictions of queries
    the predictor did not see, as it will face on the held-out fold.
    """
    fit_rows = [by[(m.qids[i], c)] for i in fit for c in m.configs if (m.qids[i], c) in by]
    predictor, est, cv_table = train.fit_recipe(fit_rows, s.estimator, s.seed, keep_cv=True,
                                                folds=s.inner_folds, repeats=s.inner_repeats,
                                                predictor_factory=s.predictor_factory)
    oof = next(c for c in cv_table or [] if c["estimator"] == est)["_oof"]
    if list(oof["qids"]) != [m.qids[i] for i in fit]:
        raise TidalConfigError("inner cross-validation queries do not match the fold.")
    cols = [list(oof["configs"]).index(n) for n in m.configs]
    f_lab, f_tok, f_lat = m.labels[fit], m.tokens[fit], m.latency[fit]
    static = static_points(f_lab, f_tok, f_lat)
    tok_hat, lat_hat = static[:, 1], static[:, 2]
    lam_t, lam_l = lambda_grid(tok_hat, lat_hat, s.points)
    lambdas = sweep(np.zeros((1, len(m.configs))), tok_hat, lat_hat, lam_t, lam_l)[1]
    points = np.mean([
        evaluate_choices(sweep(a[:, cols], tok_hat, lat_hat, lam_t, lam_l)[0],
                         f_lab, f_tok, f_lat) for a in oof["acc_hat"]], axis=0)
    points[:, 2] += s.adaptive_overhead_s
    best = static_best_index(static, np.asarray(available(f_lab).all(axis=0)))
    return TrainingFoldsFit(predictor, est, static, best, lambdas, points,
                            sorted({r["query_id"] for r in fit_rows}))


def decide_held_out(
    fitted: TrainingFoldsFit, acc_hat: np.ndarray
) -> tuple[dict[str, np.ndarray | int], dict[str, Any]]:
    """Each policy's configuration for the held-out queries (acc_hat: their H x C predictions).

    Returns (policy -> configuration indices or one index, the lambdas chosen).
    """
    best = fitted.static_best
    tok_hat, lat_hat = fitted.static[:, 1], fitted.static[:, 2]
    choices: dict[str, np.ndarray | int] = {"static": best}
    chosen: dict[str, Any] = {}
    picks = [(f"matched_{key}", matched(fitted.points, col, float(fitted.static[best, col])))
             for key, col in CV_MATCHED_COSTS]
    picks += [(f"matched_accuracy_{key}",
               cheapest_matching(fitted.points, col, float(fitted.static[best, 0])))
              for key, col in CV_MATCHED_COSTS]
    for name, j in [*picks, ("shipped_defaults", -1)]:
        if j is None:  # no lambda meets the rule on the training folds: stay static
            choices[f"adaptive_at_{name}"] = best
            chosen[f"lambdas_at_{name}"] = None
            continue
        lt, ll = SHIPPED_LAMBDAS if name == "shipped_defaults" else fitted.lambdas[j]
        utility = acc_hat - lt * tok_hat[None, :] - ll * lat_hat[None, :]
        # NaN: the configuration does not run on that step
        choices[f"adaptive_at_{name}"] = np.where(np.isnan(utility), -np.inf,
                                                  utility).argmax(axis=1)
        chosen[f"lambdas_at_{name}"] = [float(lt), float(ll)]
        if name != "shipped_defaults":
            chosen[f"training_accuracy_at_{name}"] = float(fitted.points[j, 0])
    return choices, chosen


def shipped_defaults_figures(pooled: PooledFigures, choice: dict[str, np.ndarray]
                             ) -> dict[str, Any]:
    """Adaptive with the chat model's default lambdas (the same out-of-fold predictors),
    beside the static best: the figure a user of the defaults gets."""
    s_acc, s_tok, s_lat = pooled.averaged(choice["static"])
    ch = choice["adaptive_at_shipped_defaults"]
    a_acc, a_tok, a_lat = pooled.averaged(ch, adaptive=True)
    return {
        **accuracy_cost_point(a_acc.mean(), a_tok.mean(), a_lat.mean()),
        "lambdas": [float(v) for v in SHIPPED_LAMBDAS],
        "configs_used": pooled.used(ch),
        "tokens_saved": float(1 - a_tok.mean() / s_tok.mean()),
        "latency_saved": float(1 - a_lat.mean() / s_lat.mean()),
        "adaptive_minus_static_best": paired_difference(a_acc, s_acc,
                                                        resamples=len(pooled.boot), seed=0),
    }


def lambdas_selected_on_all(
    rows: Sequence[dict[str, Any]], m: OutcomeMatrices, s: CrossValidationSettings
) -> dict[str, Any]:
    """The headline's lambda rule fitted on every query (what the chat model's defaults
    should be): the cheapest point in output tokens within the tolerance of the static
    best's accuracy, on out-of-fold predictions; likewise in latency."""
    by = {(r["query_id"], r["config"]): r for r in rows}
    fitted = fit_training_folds(m, by, np.arange(len(m.qids)), s)
    out: dict[str, Any] = {}
    for key, col in CV_MATCHED_COSTS:
        j = cheapest_matching(fitted.points, col, float(fitted.static[fitted.static_best, 0]))
        out[f"matched_accuracy_{key}"] = None if j is None else {
            "lambdas": [float(v) for v in fitted.lambdas[j]],
            **accuracy_cost_point(*fitted.points[j])}
    return out


#: "matched accuracy": adaptive within this much of the static best's accuracy
MATCHED_ACCURACY_TOLERANCE = 0.01


def cheapest_matching(points: np.ndarray, cost_col: int, static_accuracy: float) -> int | None:
    """The cheapest point (P x 3) whose accuracy is >= `static_accuracy` -
    `MATCHED_ACCURACY_TOLERANCE` (the more accurate among equal costs); None if none is."""
    ok = np.flatnonzero(points[:, 0] >= static_accuracy - MATCHED_ACCURACY_TOLERANCE - 1e-12)
    if len(ok) == 0:
        return None
    return int(ok[np.lexsort((-points[ok, 0], points[ok, cost_col]))[0]])


def decide_out_of_fold(
    rows: Sequence[dict[str, Any]], m: OutcomeMatrices, s: CrossValidationSettings
) -> OutOfFoldDecisions:
    """Every query decided once per repeat, by fits on the other folds only."""
    n_q, n_c = m.labels.shape
    by = {(r["query_id"], r["config"]): r for r in rows}
    choice = {p: np.full((s.repeats, n_q), -1, dtype=int) for p in CV_POLICIES}
    fold_of = np.zeros((s.repeats, n_q), dtype=int)
    log: list[dict[str, Any]] = []
    seen: list[dict[str, Any]] = []
    for rep in range(s.repeats):
        fold_of[rep] = outer_folds(m.qids, s.folds, rep, s.seed)
        for k in range(s.folds):
            held, fit = np.flatnonzero(fold_of[rep] == k), np.flatnonzero(fold_of[rep] != k)
            fitted = fit_training_folds(m, by, fit, s)
            acc_hat = train.predict_matrix(fitted.predictor, by, [m.qids[i] for i in held],
                                           m.configs)
            choices, chosen = decide_held_out(fitted, acc_hat)
            for policy, configs in choices.items():
                choice[policy][rep, held] = configs
            log.append({"repeat": rep, "fold": k, "held_out_queries": len(held),
                        "estimator": fitted.estimator,
                        "static_best": m.configs[fitted.static_best], **chosen})
            seen.append({"repeat": rep, "fold": k, "trained_on": fitted.trained_on,
                         "decided": [m.qids[i] for i in held]})
    if any((c < 0).any() for c in choice.values()):
        raise TidalConfigError("a query was left without an out-of-fold decision.")
    return OutOfFoldDecisions(choice, fold_of, log, seen)


class PooledFigures:
    """Figures of out-of-fold decisions pooled over all queries, against the oracle."""

    def __init__(self, m: OutcomeMatrices, seed: int, resamples: int,
                 adaptive_overhead_s: float = 0.0) -> None:
        self.m = m
        self.adaptive_overhead_s = adaptive_overhead_s
        n_q = len(m.qids)
        self.q = np.arange(n_q)
        self.oracle = oracle_choice(m.labels, m.tokens, m.latency)
        self.oracle_accuracy = m.labels[self.q, self.oracle]
        self.boot = np.random.default_rng(seed).integers(0, n_q, size=(resamples, n_q))

    def per_query(self, ch: np.ndarray, adaptive: bool = False
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Accuracy, tokens, latency of the chosen configuration of every query (an
        `adaptive` policy's latency includes its per-decision overhead)."""
        latency = self.m.latency[self.q, ch] + (self.adaptive_overhead_s if adaptive else 0.0)
        return self.m.labels[self.q, ch], self.m.tokens[self.q, ch], latency

    def averaged(self, ch: np.ndarray, adaptive: bool = False
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`per_query` of every repeat's choices (repeats x Q), averaged over the repeats."""
        vals = [self.per_query(c, adaptive) for c in ch]
        acc, tok, lat = (np.mean([v[i] for v in vals], axis=0) for i in range(3))
        return acc, tok, lat

    def point(self, ch: np.ndarray, adaptive: bool = False) -> dict[str, float]:
        return accuracy_cost_point(*(v.mean() for v in self.per_query(ch, adaptive)))

    def used(self, ch: np.ndarray) -> dict[str, int]:
        """How often each configuration was chosen."""
        counts = np.bincount(ch.ravel(), minlength=len(self.m.configs))
        return {self.m.configs[i]: int(c) for i, c in enumerate(counts) if c}

    def paired(self, static_accuracy: np.ndarray, adaptive_accuracy: np.ndarray,
               key: str) -> dict[str, Any]:
        """`_paired_figures` under the bench's ``<figure>_at_matched_<key>`` names."""
        figs = _paired_figures(static_accuracy, adaptive_accuracy, self.oracle_accuracy,
                               self.boot)
        return {f"{name}_at_matched_{key}": v for name, v in figs.items()}


def per_repeat_figures(
    pooled: PooledFigures, choice: dict[str, np.ndarray]
) -> list[dict[str, Any]]:
    """Each repeat's pooled static and adaptive points and paired figures."""
    labels, q = pooled.m.labels, pooled.q
    out: list[dict[str, Any]] = []
    for rep, static in enumerate(choice["static"]):
        item: dict[str, Any] = {"static": pooled.point(static)}
        for key, _ in CV_MATCHED_COSTS:
            ch = choice[f"adaptive_at_matched_{key}"][rep]
            item[f"adaptive_at_matched_{key}"] = pooled.point(ch, adaptive=True)
            item.update(pooled.paired(labels[q, static], labels[q, ch], key))
        out.append(item)
    return out


def matched_figures(pooled: PooledFigures, choice: dict[str, np.ndarray]) -> dict[str, Any]:
    """Static and adaptive points at matched tokens and at matched latency, averaged
    over the repeats, with the paired figures."""
    s_acc, s_tok, s_lat = pooled.averaged(choice["static"])
    out: dict[str, Any] = {}
    for key, col in CV_MATCHED_COSTS:
        ch = choice[f"adaptive_at_matched_{key}"]
        a_acc, a_tok, a_lat = pooled.averaged(ch, adaptive=True)
        adaptive_cost, static_cost = (a_tok, s_tok) if col == 1 else (a_lat, s_lat)
        out[f"adaptive_at_matched_{key}"] = {
            **accuracy_cost_point(a_acc.mean(), a_tok.mean(), a_lat.mean()),
            "configs_used": pooled.used(ch),
            "within_static_budget": bool(adaptive_cost.mean() <= static_cost.mean() * (1 + 1e-9)),
        }
        out.update(pooled.paired(s_acc, a_acc, key))
    return out


#: the goal of the headline figure: adaptive accuracy >= static best - 0.01, at least
#: 40% of the static best's output tokens saved, a quarter of the gap to the oracle closed
GOAL_TOKENS_SAVED, GOAL_GAP_CLOSED = 0.4, 0.25


def headline_figures(pooled: PooledFigures, choice: dict[str, np.ndarray]) -> dict[str, Any]:
    """The bench's headline: adaptive at matched accuracy against the static best.

    ``adaptive`` uses, in every fold, the lambda whose training-fold point is the
    cheapest in output tokens within `MATCHED_ACCURACY_TOLERANCE` of the training
    static best's accuracy (the latency figure: cheapest in latency). Savings are
    ``1 - adaptive / static best`` of the pooled means, reported "at matched accuracy"
    only when the held-out adaptive accuracy is within the tolerance (else null);
    intervals are bootstrap 95% over queries, paired across policies.
    """
    boot = pooled.boot
    s_acc, s_tok, s_lat = pooled.averaged(choice["static"])
    a_acc, a_tok, a_lat = pooled.averaged(choice["adaptive_at_matched_accuracy_tokens"],
                                          adaptive=True)
    l_acc, l_tok, l_lat = pooled.averaged(choice["adaptive_at_matched_accuracy_latency"],
                                          adaptive=True)
    static_acc = float(s_acc.mean())

    def saved(adaptive_cost: np.ndarray, static_cost: np.ndarray) -> tuple[float, Any]:
        ratio = adaptive_cost[boot].mean(axis=1) / static_cost[boot].mean(axis=1)
        return float(1 - adaptive_cost.mean() / static_cost.mean()), _ci(1 - ratio)

    def matched_only(acc: np.ndarray, value: Any) -> Any:
        return value if acc.mean() >= static_acc - MATCHED_ACCURACY_TOLERANCE - 1e-12 else None

    tokens_saved, tokens_ci = saved(a_tok, s_tok)
    latency_saved, latency_ci = saved(l_lat, s_lat)
    paired = _paired_figures(s_acc, a_acc, pooled.oracle_accuracy, boot)
    difference = paired_difference(a_acc, s_acc, resamples=len(boot), seed=0)
    gap = paired["gap_closed_expected_oracle"]
    out = {
        "static_best": {**accuracy_cost_point(static_acc, s_tok.mean(), s_lat.mean()),
                        "accuracy_ci95": _ci(s_acc[boot].mean(axis=1))},
        "adaptive": {**accuracy_cost_point(a_acc.mean(), a_tok.mean(), a_lat.mean()),
                     "accuracy_ci95": _ci(a_acc[boot].mean(axis=1)),
                     "configs_used": pooled.used(choice["adaptive_at_matched_accuracy_tokens"])},
        "adaptive_latency_rule": {
            **accuracy_cost_point(l_acc.mean(), l_tok.mean(), l_lat.mean()),
            "accuracy_ci95": _ci(l_acc[boot].mean(axis=1)),
            "configs_used": pooled.used(choice["adaptive_at_matched_accuracy_latency"])},
        "tokens_saved": tokens_saved,
        "tokens_saved_ci95": tokens_ci,
        "tokens_saved_at_matched_accuracy": matched_only(a_acc, tokens_saved),
        "tokens_saved_at_matched_accuracy_ci95": matched_only(a_acc, tokens_ci),
        "latency_saved": latency_saved,
        "latency_saved_ci95": latency_ci,
        "latency_saved_at_matched_accuracy": matched_only(l_acc, latency_saved),
        "latency_saved_at_matched_accuracy_ci95": matched_only(l_acc, latency_ci),
        "gap_closed_expected_oracle": gap,
        "gap_closed_expected_oracle_ci95": paired["gap_closed_expected_oracle_ci95"],
        "adaptive_minus_static_best": difference,
    }
    out["goal"] = {
        "accuracy_within_0.01": bool(a_acc.mean() >= static_acc - MATCHED_ACCURACY_TOLERANCE
                                     - 1e-12),
        "tokens_saved_at_least_0.4": bool(tokens_saved >= GOAL_TOKENS_SAVED),
        "gap_closed_at_least_0.25": bool(gap is not None and gap >= GOAL_GAP_CLOSED),
    }
    out["goal_met"] = all(out["goal"].values())
    return out


def _description(s: CrossValidationSettings) -> dict[str, Any]:
    """How the figure was made (the JSON's settings keys)."""
    return {
        "folds": s.folds,
        "repeats": s.repeats,
        "fold_seed": s.seed,
        "estimator": s.estimator,
        "estimator_note": (
            "the shipped model's estimator, refitted on every fold's training queries "
            "(estimator selection inside the folds is too slow for the bench)"
            if s.predictor_factory is None and s.estimator != "select" else
            "a predictor of the caller's (predictor_factory), refitted on every fold's "
            "training queries" if s.predictor_factory is not None else
            "chosen inside every fold by the shipped model's cross-validation (select)"),
        "inner_cv": {"folds": s.inner_folds, "repeats": s.inner_repeats},
        **({"adaptive_overhead_s": s.adaptive_overhead_s} if s.adaptive_overhead_s else {}),
        "choices_fitted_on": (
            "the other folds only: predictor, cost means, static best (best training accuracy) "
            "and lambda (most accurate on the training folds' out-of-fold predictions within "
            "the training static best's mean tokens / latency)"),
        "bootstrap": {"resamples": s.resamples, "seed": s.seed, "level": 0.95,
                      "over": "queries (per-query values averaged over the repeats)"},
    }


def cross_validated_allocation(
    rows: Sequence[dict[str, Any]],
    estimator: str = CV_ESTIMATOR,
    folds: int = CV_FOLDS,
    repeats: int = CV_REPEATS,
    seed: int = CV_SEED,
    inner_folds: int = 5,
    inner_repeats: int = 3,
    points: int = 30,
    resamples: int = CV_RESAMPLES,
    predictor_factory: train.PredictorFactory | None = None,
    adaptive_overhead_s: float = 0.0,
) -> dict[str, Any]:
    """Static best vs adaptive vs oracle, cross-validated over *all* queries of `rows`.

    See the module docstring. ``_folds`` (popped by `bench allocation`)
    records, per fold, the query ids the fit saw and the ones it decided.
    `predictor_factory` and `adaptive_overhead_s`: see `CrossValidationSettings`.
    """
    t0 = time.perf_counter()
    s = CrossValidationSettings(estimator, folds, repeats, seed, inner_folds, inner_repeats,
                                points, resamples, predictor_factory, adaptive_overhead_s)
    m = outcome_matrices(rows)
    n_q = len(m.qids)
    if n_q < folds * 2 * inner_folds:
        raise TidalConfigError(f"{n_q} complete queries; the cross-validated figure needs at "
                               f"least {folds * 2 * inner_folds} (folds={folds}, "
                               f"inner folds={inner_folds}).")
    decisions = decide_out_of_fold(rows, m, s)
    choice, fold_of = decisions.choice, decisions.fold_of
    pooled = PooledFigures(m, seed, resamples, adaptive_overhead_s)
    per_repeat = per_repeat_figures(pooled, choice)
    s_acc, s_tok, s_lat = pooled.averaged(choice["static"])
    static_per_fold = np.array([
        [choice["static"][e["repeat"]][fold_of[e["repeat"]] == e["fold"]][0]]
        for e in decisions.log])
    out: dict[str, Any] = {
        "queries": n_q,
        **_description(s),
        "static": {**accuracy_cost_point(s_acc.mean(), s_tok.mean(), s_lat.mean()),
                   "configs_chosen_per_fold": pooled.used(static_per_fold)},
        "oracle": pooled.point(pooled.oracle),
    }
    out.update(headline_figures(pooled, choice))
    out["adaptive_at_shipped_defaults"] = shipped_defaults_figures(pooled, choice)
    out["lambdas_selected_on_all_queries"] = lambdas_selected_on_all(rows, m, s)
    out.update(matched_figures(pooled, choice))
    out["per_repeat"] = per_repeat
    out["per_fold"] = decisions.log
    out["wall_s"] = time.perf_counter() - t0
    out["_folds"] = decisions.seen
    return out
