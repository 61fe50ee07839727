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
tokens) is not above the best static configuration's.

* cascade (``cascade_*`` keys, `tidal_agents.evaluation.cascade`): a 1-sample
  probe, stopped at when its confidence reaches a threshold, else a best-of-N
  vote (probe included); costs of both stages summed. Threshold and target
  are chosen on the training queries by the same matching rule (within the
  training static best's cost), then evaluated once on the held-out queries.
* greedy-probe cascade (``cascade_greedy_*``, needs ``greedy-*.jsonl.gz``,
  `collect --greedy-logprobs-only`): the probe is the greedy request
  regenerated with log-probs; confidence method, threshold and target chosen
  on the training queries (method by cross-validation); and predictor + probe
  (``cascade_predictor_probe_*``): per query, stop at greedy or escalate, by
  the utility rule over a predictor with the probe's features, lambda chosen by
  cross-validation on the training queries.
* cross-validated (``cross_validated``, `cross_validated_allocation`): the
  static best / adaptive / oracle comparison over *all* queries, 5 query-grouped
  folds x 3 repeats, everything (predictor, cost means, static best, lambda)
  fitted on the other folds; pooled out-of-fold decisions, bootstrap 95%
  intervals over queries. Less noisy than the one held-out split.
* ``adaptive_policy`` names the adaptive policy the ``adaptive_*`` /
  ``gap_closed_*`` keys report: the predictor policy, unless a cascade policy
  is more accurate than it at both matched latency and matched tokens.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tidal_agents.errors import TidalConfigError


def _point(acc: float, tokens: float, latency: float) -> dict[str, float]:
    return {"accuracy": float(acc), "tokens": float(tokens), "latency_s": float(latency)}


def outcome_matrices(
    rows: Sequence[dict[str, Any]], configs: Sequence[str] | None = None
) -> tuple[list[str], list[str], np.ndarray, np.ndarray, np.ndarray]:
    """(query ids, config names, soft labels, tokens, latency) as Q x C arrays.

    Only queries with a row for every configuration are kept.
    """
    by_q: dict[str, dict[str, dict[str, Any]]] = {}
    for r in rows:
        by_q.setdefault(r["query_id"], {})[r["config"]] = r
    if configs is None:
        common = set.intersection(*(set(v) for v in by_q.values())) if by_q else set()
        configs = sorted(common, key=_config_order)
    if not configs:
        raise TidalConfigError("no configuration is present for every query.")
    qids = sorted(q for q, v in by_q.items() if all(c in v for c in configs))
    if not qids:
        raise TidalConfigError("no query has a row for every configuration.")
    def m(key: str) -> np.ndarray:
        return np.array([[float(by_q[q][c][key]) for c in configs] for q in qids])
    return qids, list(configs), m("soft_label"), m("tokens"), m("latency_s")


def _config_order(name: str) -> tuple[int, int, str]:
    import re

    if name == "greedy":
        return (0, 0, name)
    if name == "single":
        return (1, 1, name)
    m = re.match(r"(bo|beam)(\d+)", name)
    return (2 if m and m.group(1) == "bo" else 3, int(m.group(2)) if m else 0, name)


def oracle_choice(labels: np.ndarray, tokens: np.ndarray, latency: np.ndarray) -> np.ndarray:
    """Per query: highest soft label; among ties, fewest tokens, then lowest latency."""
    best = labels.max(axis=1, keepdims=True)
    tied = np.isclose(labels, best)
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


def _gap(adaptive: float, static: float, oracle: float) -> float | None:
    return (adaptive - static) / (oracle - static) if oracle - static > 1e-12 else None


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


def lambda_grid(
    tokens_hat: np.ndarray, latency_hat: np.ndarray, points: int
) -> tuple[np.ndarray, np.ndarray]:
    """(lambda_T, lambda_L) values in "accuracy per unit of cost", spanning the cost ranges."""
    lam_t = np.concatenate([[0.0], np.geomspace(1e-3, 10, points - 1) / tokens_hat.max()])
    lam_l = np.concatenate([[0.0], np.geomspace(1e-3, 10, points - 1) / latency_hat.max()])
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
    static = np.stack([labels.mean(axis=0), tokens.mean(axis=0), latency.mean(axis=0)], axis=1)
    best_i = int(np.lexsort((static[:, 1], -static[:, 0]))[0])
    oc = oracle_choice(labels, tokens, latency)
    oracle = evaluate_choices(oc[None, :], labels, tokens, latency)[0]
    lam_t, lam_l = lambda_grid(tokens_hat, latency_hat, points)
    choices, lambdas = sweep(acc_hat, tokens_hat, latency_hat, lam_t, lam_l)
    adaptive = evaluate_choices(choices, labels, tokens, latency)

    out: dict[str, Any] = {
        "configs": names,
        "static": {n: _point(*static[i]) for i, n in enumerate(names)},
        "static_best": {"config": names[best_i], **_point(*static[best_i])},
        "oracle": _point(*oracle),
    }
    for key, col in (("latency", 2), ("tokens", 1)):
        j = matched(adaptive, col, static[best_i, col])
        if j is None:
            out[f"adaptive_at_matched_{key}"] = None
            out[f"gap_closed_at_matched_{key}"] = None
            continue
        lt, ll = lambdas[j]
        picked = np.bincount(choices[j], minlength=len(names))
        out[f"adaptive_at_matched_{key}"] = {
            **_point(*adaptive[j]), "lambda_tokens": float(lt), "lambda_latency": float(ll),
            "configs_used": {names[k]: int(c) for k, c in enumerate(picked) if c},
        }
        out[f"gap_closed_at_matched_{key}"] = _gap(adaptive[j, 0], static[best_i, 0], oracle[0])
    # the sweep's highest accuracy at any cost, for scale
    out["adaptive_max_accuracy"] = float(adaptive[:, 0].max())
    out["_arrays"] = (static, names, adaptive, oracle)
    return out


def evaluate(
    rows: Sequence[dict[str, Any]],
    predictor: Any,
    test_fraction: float,
    split_seed: int,
    points: int = 30,
    cascade_inputs: tuple[dict[str, dict[str, Any]], Any] | None = None,
    greedy_records: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """All figures of the benchmark (see the module docstring).

    `cascade_inputs` (sample records, latency fit; `evaluation.cascade.load_cascade_inputs`)
    adds the cascade's keys (`cascade_keys`).
    """
    from tidal_agents.evaluation.train import predict_rows, split_rows

    train_rows, test_rows = split_rows(rows, test_fraction, split_seed)
    qids, names, labels, tokens, latency = outcome_matrices(test_rows)
    _, _, _, tr_tokens, tr_latency = outcome_matrices(train_rows, names)
    tokens_hat, latency_hat = tr_tokens.mean(axis=0), tr_latency.mean(axis=0)
    # predicted accuracy per (held-out query, config)
    by = {(r["query_id"], r["config"]): r for r in test_rows}
    flat = [by[(q, c)] for q in qids for c in names]
    acc_hat = predict_rows(predictor, flat).reshape(len(qids), len(names))

    out: dict[str, Any] = {"held_out_queries": len(qids)}
    out.update(allocation_figures(names, labels, tokens, latency, acc_hat, tokens_hat,
                                  latency_hat, points))
    if cascade_inputs is not None:
        tr_ids, _, tr_labels, _, _ = outcome_matrices(train_rows, names)
        tr_static = np.stack([tr_labels.mean(axis=0), tr_tokens.mean(axis=0),
                              tr_latency.mean(axis=0)], axis=1)
        tr_best = int(np.lexsort((tr_static[:, 1], -tr_static[:, 0]))[0])
        sb = out["static_best"]
        out.update(cascade_keys(
            cascade_inputs, {r["query_id"]: int(r["prompt_tokens"]) for r in rows},
            tr_ids, qids,
            {"latency": float(tr_static[tr_best, 2]), "tokens": float(tr_static[tr_best, 1])},
            {"latency": sb["latency_s"], "tokens": sb["tokens"]},
            sb["accuracy"], out["oracle"]["accuracy"], names[tr_best],
        ))
        if greedy_records is not None:
            out.update(greedy_cascade_keys(
                cascade_inputs, greedy_records, rows, tr_ids, qids,
                {"latency": float(tr_static[tr_best, 2]),
                 "tokens": float(tr_static[tr_best, 1])},
                {"latency": sb["latency_s"], "tokens": sb["tokens"]},
                sb["accuracy"], out["oracle"]["accuracy"], names[tr_best],
            ))
    out.update(best_adaptive_policy(out))
    return out


#: cross-validated figure over all queries (`cross_validated_allocation`)
CV_FOLDS, CV_REPEATS, CV_SEED, CV_RESAMPLES = 5, 3, 0, 1000
#: the estimator refitted in every outer fold: the shipped model's. "select" (the
#: shipped model's CV choice between logistic and hgb, redone inside every outer
#: fold) takes ~15 s per fold here, too slow for the bench's budget.
CV_ESTIMATOR = "logistic"


def outer_folds(qids: Sequence[str], folds: int, repeat: int, seed: int = CV_SEED) -> np.ndarray:
    """Balanced query-grouped folds: a seeded permutation of the queries, dealt round-robin."""
    order = np.random.default_rng([seed, repeat, 6]).permutation(len(qids))
    fold = np.empty(len(qids), dtype=int)
    fold[order] = np.arange(len(qids)) % folds
    return fold


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
            "gap_closed": _gap(float(a), float(s), float(o)), "gap_closed_ci95": _ci(gap_b)}


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
) -> dict[str, Any]:
    """Static best vs adaptive vs oracle, cross-validated over *all* queries of `rows`.

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
    intervals over queries (per-query values averaged over repeats; `resamples`
    seeded resamples, paired across policies). ``_folds`` (popped by `run`)
    records, per fold, the query ids the fit saw and the ones it decided.
    """
    from tidal_agents.evaluation import train as tr

    t0 = time.perf_counter()
    qids, names, labels, tokens, latency = outcome_matrices(rows)
    n_q, n_c = labels.shape
    if n_q < folds * 2 * inner_folds:
        raise TidalConfigError(f"{n_q} complete queries; the cross-validated figure needs at "
                               f"least {folds * 2 * inner_folds} (folds={folds}, "
                               f"inner folds={inner_folds}).")
    by = {(r["query_id"], r["config"]): r for r in rows}
    policies = ("static", "adaptive_at_matched_tokens", "adaptive_at_matched_latency")
    choice = {p: np.full((repeats, n_q), -1, dtype=int) for p in policies}
    fold_of = np.zeros((repeats, n_q), dtype=int)
    log: list[dict[str, Any]] = []
    seen: list[dict[str, Any]] = []
    for rep in range(repeats):
        fold_of[rep] = outer_folds(qids, folds, rep, seed)
        for k in range(folds):
            held, fit = np.flatnonzero(fold_of[rep] == k), np.flatnonzero(fold_of[rep] != k)
            fit_rows = [by[(qids[i], c)] for i in fit for c in names]
            predictor, est, cv_table = tr.fit_recipe(fit_rows, estimator, seed, keep_cv=True,
                                                     folds=inner_folds, repeats=inner_repeats)
            oof = next(c for c in cv_table or [] if c["estimator"] == est)["_oof"]
            if list(oof["qids"]) != [qids[i] for i in fit]:
                raise TidalConfigError("inner cross-validation queries do not match the fold.")
            cols = [list(oof["configs"]).index(n) for n in names]
            f_lab, f_tok, f_lat = labels[fit], tokens[fit], latency[fit]
            tok_hat, lat_hat = f_tok.mean(axis=0), f_lat.mean(axis=0)
            f_static = np.stack([f_lab.mean(axis=0), tok_hat, lat_hat], axis=1)
            best = int(np.lexsort((f_static[:, 1], -f_static[:, 0]))[0])
            lam_t, lam_l = lambda_grid(tok_hat, lat_hat, points)
            lambdas = sweep(np.zeros((1, n_c)), tok_hat, lat_hat, lam_t, lam_l)[1]
            f_points = np.mean([
                evaluate_choices(sweep(a[:, cols], tok_hat, lat_hat, lam_t, lam_l)[0],
                                 f_lab, f_tok, f_lat) for a in oof["acc_hat"]], axis=0)
            acc_hat = tr.predict_rows(predictor, [by[(qids[i], c)] for i in held for c in names])
            acc_hat = acc_hat.reshape(len(held), n_c)
            choice["static"][rep, held] = best
            entry: dict[str, Any] = {"repeat": rep, "fold": k, "held_out_queries": len(held),
                                     "estimator": est, "static_best": names[best]}
            for key, col in (("tokens", 1), ("latency", 2)):
                j = matched(f_points, col, float(f_static[best, col]))
                if j is None:  # no lambda within the training budget: stay static
                    choice[f"adaptive_at_matched_{key}"][rep, held] = best
                    entry[f"lambdas_at_matched_{key}"] = None
                    continue
                lt, ll = lambdas[j]
                utility = acc_hat - lt * tok_hat[None, :] - ll * lat_hat[None, :]
                choice[f"adaptive_at_matched_{key}"][rep, held] = utility.argmax(axis=1)
                entry[f"lambdas_at_matched_{key}"] = [float(lt), float(ll)]
                entry[f"training_accuracy_at_matched_{key}"] = float(f_points[j, 0])
            log.append(entry)
            seen.append({"repeat": rep, "fold": k,
                         "trained_on": sorted({r["query_id"] for r in fit_rows}),
                         "decided": [qids[i] for i in held]})
    if any((c < 0).any() for c in choice.values()):
        raise TidalConfigError("a query was left without an out-of-fold decision.")

    q = np.arange(n_q)
    oc = oracle_choice(labels, tokens, latency)
    boot = np.random.default_rng(seed).integers(0, n_q, size=(resamples, n_q))

    def per_query(ch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return labels[q, ch], tokens[q, ch], latency[q, ch]

    def point(ch: np.ndarray) -> dict[str, float]:
        return _point(*(v.mean() for v in per_query(ch)))

    def used(ch: np.ndarray) -> dict[str, int]:
        counts = np.bincount(ch.ravel(), minlength=n_c)
        return {names[i]: int(c) for i, c in enumerate(counts) if c}

    oracle_acc = labels[q, oc]
    per_repeat: list[dict[str, Any]] = []
    for rep in range(repeats):
        item: dict[str, Any] = {"static": point(choice["static"][rep])}
        for key in ("tokens", "latency"):
            ch = choice[f"adaptive_at_matched_{key}"][rep]
            item[f"adaptive_at_matched_{key}"] = point(ch)
            figs = _paired_figures(labels[q, choice["static"][rep]], labels[q, ch],
                                   oracle_acc, boot)
            item.update({f"{name}_at_matched_{key}": v for name, v in figs.items()})
        per_repeat.append(item)

    def averaged(ch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        vals = [per_query(c) for c in ch]
        return tuple(np.mean([v[i] for v in vals], axis=0) for i in range(3))  # type: ignore[return-value]

    s_acc, s_tok, s_lat = averaged(choice["static"])
    out: dict[str, Any] = {
        "queries": n_q,
        "folds": folds,
        "repeats": repeats,
        "fold_seed": seed,
        "estimator": estimator,
        "estimator_note": (
            "the shipped model's estimator, refitted on every fold's training queries "
            "(estimator selection inside the folds is too slow for the bench)"
            if estimator != "select" else
            "chosen inside every fold by the shipped model's cross-validation (select)"),
        "inner_cv": {"folds": inner_folds, "repeats": inner_repeats},
        "choices_fitted_on": (
            "the other folds only: predictor, cost means, static best (best training accuracy) "
            "and lambda (most accurate on the training folds' out-of-fold predictions within "
            "the training static best's mean tokens / latency)"),
        "bootstrap": {"resamples": resamples, "seed": seed, "level": 0.95,
                      "over": "queries (per-query values averaged over the repeats)"},
        "static": {**_point(s_acc.mean(), s_tok.mean(), s_lat.mean()),
                   "configs_chosen_per_fold": used(np.array(
                       [[choice["static"][e["repeat"]][fold_of[e["repeat"]] == e["fold"]][0]]
                        for e in log]))},
        "oracle": point(oc),
    }
    goal = True
    for key in ("tokens", "latency"):
        ch = choice[f"adaptive_at_matched_{key}"]
        a_acc, a_tok, a_lat = averaged(ch)
        figs = _paired_figures(s_acc, a_acc, oracle_acc, boot)
        out[f"adaptive_at_matched_{key}"] = {
            **_point(a_acc.mean(), a_tok.mean(), a_lat.mean()), "configs_used": used(ch),
            "within_static_budget": bool(
                (a_tok if key == "tokens" else a_lat).mean()
                <= (s_tok if key == "tokens" else s_lat).mean() * (1 + 1e-9)),
        }
        out.update({f"{name}_at_matched_{key}": v for name, v in figs.items()})
        gap = figs["gap_closed"]
        goal = goal and figs["adaptive_minus_static"] >= 0 and gap is not None and gap >= 0.5
    out["goal_met"] = bool(goal)
    out["per_repeat"] = per_repeat
    out["per_fold"] = log
    out["wall_s"] = time.perf_counter() - t0
    out["_folds"] = seen
    return out


#: adaptive policies the bench can report, with the prefix of their matched keys
ADAPTIVE_POLICIES = (("predictor", "adaptive"), ("cascade", "cascade"),
                     ("cascade_greedy", "cascade_greedy"),
                     ("cascade_predictor_probe", "cascade_predictor_probe"))


def best_adaptive_policy(out: dict[str, Any]) -> dict[str, Any]:
    """``adaptive_policy`` and, if a cascade beats the predictor policy, its points.

    A cascade replaces the predictor policy in ``adaptive_at_matched_*`` /
    ``gap_closed_at_matched_*`` only if it is more accurate at both matched
    latency and matched tokens; among several, the best mean of the two.
    The predictor policy's own points stay under ``predictor_at_matched_*``.
    """
    def acc(prefix: str, key: str) -> float | None:
        p = out.get(f"{prefix}_at_matched_{key}")
        return None if p is None else float(p["accuracy"])

    keys = ("latency", "tokens")
    base = [acc("adaptive", k) for k in keys]
    best, best_score = "predictor", None
    for name, prefix in ADAPTIVE_POLICIES[1:]:
        mine = [acc(prefix, k) for k in keys]
        if any(m is None for m in mine):
            continue
        if all(b is None or m > b + 1e-12 for m, b in zip(mine, base, strict=True)):  # type: ignore[operator]
            score = float(np.mean(mine))  # type: ignore[arg-type]
            if best_score is None or score > best_score:
                best, best_score = name, score
    res: dict[str, Any] = {"adaptive_policy": best}
    if best != "predictor":
        prefix = dict(ADAPTIVE_POLICIES)[best]
        for k in keys:
            res[f"predictor_at_matched_{k}"] = out.get(f"adaptive_at_matched_{k}")
            res[f"predictor_gap_closed_at_matched_{k}"] = out.get(f"gap_closed_at_matched_{k}")
            res[f"adaptive_at_matched_{k}"] = out[f"{prefix}_at_matched_{k}"]
            res[f"gap_closed_at_matched_{k}"] = out[f"{prefix}_gap_closed_at_matched_{k}"]
    return res


def greedy_cascade_keys(
    inputs: tuple[dict[str, dict[str, Any]], Any],
    greedy_records: dict[str, dict[str, Any]],
    rows: Sequence[dict[str, Any]],
    train_ids: Sequence[str],
    test_ids: Sequence[str],
    train_budgets: dict[str, float],
    test_budgets: dict[str, float],
    static_best: float,
    oracle: float,
    train_static_best: str,
) -> dict[str, Any]:
    """The greedy-probe cascade's and predictor + probe's keys (fitted on training queries)."""
    from tidal_agents.evaluation.cascade import greedy_cascade_figures

    records, latency_model = inputs
    fig = greedy_cascade_figures(records, greedy_records, latency_model, rows, train_ids,
                                 test_ids, train_budgets, test_budgets)
    pp = fig.pop("predictor_probe")
    out: dict[str, Any] = {}
    for key in ("latency", "tokens"):
        for prefix, src in (("cascade_greedy", fig), ("cascade_predictor_probe", pp)):
            point = src.pop(f"at_matched_{key}")
            out[f"{prefix}_at_matched_{key}"] = point
            out[f"{prefix}_gap_closed_at_matched_{key}"] = (
                None if point is None else _gap(point["accuracy"], static_best, oracle))
    fig["fitted_on"] = (f"{len(train_ids)} training queries (choices by query-grouped "
                        f"cross-validation on them); budgets: the training static best "
                        f"({train_static_best}) mean latency / tokens")
    fig["predictor_probe"] = pp
    out["cascade_greedy"] = fig
    return out


def cascade_keys(
    inputs: tuple[dict[str, dict[str, Any]], Any],
    prompt_tokens: dict[str, int],
    train_ids: Sequence[str],
    test_ids: Sequence[str],
    train_budgets: dict[str, float],
    test_budgets: dict[str, float],
    static_best: float,
    oracle: float,
    train_static_best: str,
) -> dict[str, Any]:
    """The cascade's keys: fitted on the training queries, evaluated on the held-out ones.

    Its matched points obey the bench's matching rule applied on the training
    split (most accurate policy whose training mean cost is within the training
    static best's), so nothing is chosen on held-out labels; `within_budget`
    says whether the held-out cost also stayed within the held-out static best's.
    """
    from tidal_agents.evaluation.cascade import cascade_figures

    records, latency_model = inputs
    fig = cascade_figures(records, latency_model, prompt_tokens, train_ids, test_ids,
                          train_budgets, test_budgets)
    out: dict[str, Any] = {}
    for key in ("latency", "tokens"):
        point = fig.pop(f"at_matched_{key}")
        out[f"cascade_at_matched_{key}"] = point
        out[f"cascade_gap_closed_at_matched_{key}"] = (
            None if point is None else _gap(point["accuracy"], static_best, oracle))
    fig["fitted_on"] = (f"{len(train_ids)} training queries; budgets: the training static "
                        f"best ({train_static_best}) mean latency / tokens")
    out["cascade"] = fig
    return out


def _table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"allocation on {result['held_out_queries']} held-out queries")
    for col in ("policy", "accuracy", "tokens", "latency s"):
        t.add_column(col, justify="left" if col == "policy" else "right")
    for name, p in result["static"].items():
        t.add_row(f"static {name}", f"{p['accuracy']:.3f}", f"{p['tokens']:.0f}",
                  f"{p['latency_s']:.2f}")
    for key in ("adaptive_at_matched_latency", "adaptive_at_matched_tokens"):
        p = result.get(key)
        if p:
            t.add_row(key.replace("_", " "), f"{p['accuracy']:.3f}", f"{p['tokens']:.0f}",
                      f"{p['latency_s']:.2f}")
    for key in ("cascade_at_matched_latency", "cascade_at_matched_tokens",
                "cascade_greedy_at_matched_latency", "cascade_greedy_at_matched_tokens"):
        p = result.get(key)
        if p:
            t.add_row(f"{key.replace('_', ' ')} (t={p['threshold']}, {p['escalate_to']})",
                      f"{p['accuracy']:.3f}", f"{p['tokens']:.0f}", f"{p['latency_s']:.2f}")
    for key in ("cascade_predictor_probe_at_matched_latency",
                "cascade_predictor_probe_at_matched_tokens"):
        p = result.get(key)
        if p:
            t.add_row(key.replace("_", " "), f"{p['accuracy']:.3f}", f"{p['tokens']:.0f}",
                      f"{p['latency_s']:.2f}")
    o = result["oracle"]
    t.add_row("oracle", f"{o['accuracy']:.3f}", f"{o['tokens']:.0f}", f"{o['latency_s']:.2f}")
    cv = result.get("cross_validated") or {}
    if "queries" in cv:
        for key in ("static", "adaptive_at_matched_latency", "adaptive_at_matched_tokens",
                    "oracle"):
            p = cv[key]
            t.add_row(f"CV ({cv['queries']} queries) {key.replace('_', ' ')}",
                      f"{p['accuracy']:.3f}", f"{p['tokens']:.0f}", f"{p['latency_s']:.2f}")
    Console(stderr=True).print(t)


def run(config: Any = None, args: Any = None) -> dict[str, Any]:
    """Entry point of `tidal-agents bench allocation` (the engine config is not used)."""
    from tidal_agents.allocation.predictor import SklearnAccuracyPredictor
    from tidal_agents.evaluation.train import (
        DEFAULT_TEST_FRACTION,
        REPORT_FILE,
        data_dir,
        load_outcomes,
        split_rows,
        train,
    )

    t0 = time.perf_counter()
    outcome_files = getattr(args, "outcomes", None)
    rows = load_outcomes(outcome_files)
    report_path = data_dir() / REPORT_FILE
    fraction, seed = DEFAULT_TEST_FRACTION, 0
    predictor = None
    source = "trained in this run on the training split (estimator chosen by CV on it)"
    if not outcome_files and report_path.exists():
        report = json.loads(report_path.read_text())
        fraction, seed = float(report["test_fraction"]), int(report["split_seed"])
        predictor = SklearnAccuracyPredictor.load_default()
        source = "shipped (tidal_agents/data), trained on the same training split"
    if predictor is None:
        split_rows(rows, fraction, seed)  # fails clearly on a degenerate split
        predictor, _ = train(rows, fraction, seed, estimator="select")
    points = 12 if getattr(args, "quick", False) else 30
    cascade_inputs, cascade_note = _cascade_inputs(outcome_files)
    greedy_records, greedy_note = _greedy_records(outcome_files, cascade_note)
    result = evaluate(rows, predictor, fraction, seed, points=points,
                      cascade_inputs=cascade_inputs, greedy_records=greedy_records)
    if cascade_note:
        for key in ("latency", "tokens"):
            result[f"cascade_at_matched_{key}"] = None
            result[f"cascade_gap_closed_at_matched_{key}"] = None
        result["cascade"] = {"unavailable": cascade_note}
    if greedy_note:
        for prefix in ("cascade_greedy", "cascade_predictor_probe"):
            for key in ("latency", "tokens"):
                result[f"{prefix}_at_matched_{key}"] = None
                result[f"{prefix}_gap_closed_at_matched_{key}"] = None
        result["cascade_greedy"] = {"unavailable": greedy_note}
    try:
        cv = cross_validated_allocation(rows, points=points)
        cv.pop("_folds")
    except TidalConfigError as e:
        cv = {"unavailable": str(e)}
    result["cross_validated"] = cv
    static, names, adaptive, oracle = result.pop("_arrays")
    plot_dir = Path(getattr(args, "plot_dir", None) or _default_plot_dir())
    title = (f"{len(names)} configurations, {result['held_out_queries']} held-out queries, "
             f"{len(adaptive)} lambda pairs")
    result["plots"] = _plots(plot_dir, static, names, adaptive, oracle, title)
    result["predictor"] = source
    result["split"] = {"test_fraction": fraction, "seed": seed}
    result["bench_wall_s"] = time.perf_counter() - t0
    _table(result)
    return result


def _cascade_inputs(outcome_files: Sequence[Path] | None) -> tuple[Any, str | None]:
    """(sample records, latency fit) beside the one outcome file, or (None, why not)."""
    from tidal_agents.evaluation.cascade import load_cascade_inputs
    from tidal_agents.evaluation.train import default_outcome_files

    files = list(outcome_files) if outcome_files else default_outcome_files()
    if len(files) != 1:
        return None, f"the cascade needs exactly one outcome file, got {len(files)}."
    try:
        return load_cascade_inputs(Path(files[0])), None
    except TidalConfigError as e:
        return None, str(e)


def _greedy_records(
    outcome_files: Sequence[Path] | None, cascade_note: str | None
) -> tuple[dict[str, dict[str, Any]] | None, str | None]:
    """The greedy-with-log-probs records beside the one outcome file, or (None, why not)."""
    from tidal_agents.evaluation.cascade import load_greedy_records, side_file
    from tidal_agents.evaluation.train import default_outcome_files

    if cascade_note:
        return None, cascade_note
    files = list(outcome_files) if outcome_files else default_outcome_files()
    recs = load_greedy_records(Path(files[0]))
    if recs is None:
        return None, (f"{side_file(Path(files[0]), 'greedy')} does not exist; run "
                      "`tidal-agents collect --greedy-logprobs-only` (docs/evaluation.md).")
    return recs, None


def _default_plot_dir() -> Path:
    from tidal_agents.paths import home_dir

    return home_dir() / "bench" / "allocation"


def main(argv: list[str] | None = None) -> int:
    """Standalone: ``python -m tidal_agents.bench.allocation [--outcomes F ...] [--plot-dir D]``."""
    import argparse

    p = argparse.ArgumentParser(prog="bench allocation")
    p.add_argument("--outcomes", type=Path, nargs="*", default=None)
    p.add_argument("--plot-dir", type=Path, default=None)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    print(json.dumps(run(None, args), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
