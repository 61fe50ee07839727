"""Offline evaluation of the two-stage cascade ("probe, then decide").

Stage 1 (the probe) is one real 1-sample request; its confidence
(`tidal_agents.selection.confidence.probe_confidence`: exp(mean token
log-prob), 0 when no number parses out of it) decides: at or above a
threshold the probe's answer is returned, below it a best-of-N request of
``n`` fresh samples runs and its vote (the probe's answer included) is returned.

From the committed samples file (``samples-*.jsonl.gz``): the greedy sample
was collected **without** log-probs, so the probe is sample #0 of the
temperature-0.7 request (its own mean log-prob and answer; a real 1-sample
draw). Stage 2 is bootstrapped from the other 15 samples exactly as
`collect.bootstrap` does for best-of-N: 30 random subsets of ``n`` (one when
``n`` = 15), vote (majority or exp(mean log-prob) weights, ties split)
over subset + probe, correctness averaged.

Costs are the sum of both stages, never cheaper than running them:
tokens = (prompt + probe tokens) + (prompt + the subset's tokens), exact;
latency = the latency fit of ``latency-*.jsonl.gz`` (the one the outcome
rows use) at n=1 for the probe plus at n for stage 2 (its longest sample).

Thresholds and targets are chosen on the **training** queries only
(`fit_cascade`): the most accurate (threshold, target) whose mean latency
(tokens) on the training queries is within the training static best's (the
bench's matching rule, applied where fitting is allowed); that one policy is
then evaluated on the held-out queries.

The greedy-probe cascade and "predictor + probe" (bottom of this module) use
the greedy request regenerated with log-probs (``greedy-*.jsonl.gz``,
`collect --greedy-logprobs-only`) as the probe instead.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from tidal_agents.errors import TidalConfigError
from tidal_agents.evaluation.collect import (
    DEFAULT_RESAMPLES,
    LatencyMeasurement,
    LatencyModel,
    SampleOutcome,
    read_rows,
    vote_expected_correct,
)
from tidal_agents.selection.confidence import probe_confidence

#: stage-2 sizes: with the probe's vote, 4, 8 and 16 answers (15 = every other sample)
TARGET_NS = (3, 7, 15)
SELECTORS = ("majority", "confidence")
#: the threshold grid searched on the training queries (1.0: escalate always)
THRESHOLDS = tuple(float(t) for t in np.round(np.arange(0.30, 1.0001, 0.025), 3))


@dataclass(frozen=True)
class CascadeTarget:
    """Stage 2: `n` fresh samples, `selector` vote over them (and the probe if `probe_votes`)."""

    n: int
    selector: str
    probe_votes: bool = True
    probe: str = "probe"

    @property
    def name(self) -> str:
        join = "+" if self.probe_votes else "->"
        return f"{self.probe}{join}bo{self.n}-{self.selector}"


TARGETS = tuple(CascadeTarget(n, s) for n in TARGET_NS for s in SELECTORS)


@dataclass(frozen=True)
class CascadeOutcomes:
    """Per query (Q) and target (K): the probe and the escalated outcome, both stages' costs."""

    query_ids: list[str]
    targets: tuple[CascadeTarget, ...]
    confidence: np.ndarray  # Q
    probe_label: np.ndarray  # Q
    probe_tokens: np.ndarray  # Q
    probe_latency: np.ndarray  # Q
    escalated_label: np.ndarray  # Q x K
    escalated_tokens: np.ndarray  # Q x K (probe + stage 2)
    escalated_latency: np.ndarray  # Q x K (probe + stage 2)

    def subset(self, idx: np.ndarray) -> CascadeOutcomes:
        return CascadeOutcomes(
            [self.query_ids[i] for i in idx], self.targets, self.confidence[idx],
            self.probe_label[idx], self.probe_tokens[idx], self.probe_latency[idx],
            self.escalated_label[idx], self.escalated_tokens[idx], self.escalated_latency[idx],
        )

    def evaluate(self, threshold: float, k: int) -> tuple[float, float, float, float]:
        """(accuracy, mean tokens, mean latency, fraction stopped) of one policy."""
        stop = self.confidence >= threshold
        acc = np.where(stop, self.probe_label, self.escalated_label[:, k])
        tok = np.where(stop, self.probe_tokens, self.escalated_tokens[:, k])
        lat = np.where(stop, self.probe_latency, self.escalated_latency[:, k])
        return float(acc.mean()), float(tok.mean()), float(lat.mean()), float(stop.mean())

    def grid(self, thresholds: Sequence[float] = THRESHOLDS) -> np.ndarray:
        """(threshold index, target index, accuracy, tokens, latency, stopped) per policy."""
        return np.array([(i, k, *self.evaluate(t, k)) for i, t in enumerate(thresholds)
                         for k in range(len(self.targets))])


def side_file(outcomes: Path, kind: str) -> Path:
    """``outcomes-arith.jsonl.gz`` -> ``samples-arith.jsonl.gz`` (kind = samples / latency)."""
    return outcomes.with_name(outcomes.name.replace("outcomes-", f"{kind}-", 1))


def cascade_outcomes(
    records: dict[str, dict[str, Any]],
    query_ids: Sequence[str],
    latency: LatencyModel,
    prompt_tokens: dict[str, int],
    targets: Sequence[CascadeTarget] = TARGETS,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> CascadeOutcomes:
    """Probe and escalation outcomes of `query_ids` from their sample records.

    `prompt_tokens`: per query, from its outcome rows (the samples file has none).
    """
    q_n, k_n = len(query_ids), len(targets)
    conf, p_lab, p_tok, p_lat = (np.zeros(q_n) for _ in range(4))
    e_lab, e_tok, e_lat = (np.zeros((q_n, k_n)) for _ in range(3))
    for i, q in enumerate(query_ids):
        rec = records.get(q)
        if rec is None:
            raise TidalConfigError(f"query {q} has no record in the samples file.")
        samples = [SampleOutcome(**s) for s in rec["samples"]]
        probe, rest = samples[0], samples[1:]
        prompt = int(prompt_tokens[q])
        conf[i] = probe_confidence(probe.mean_logprob, probe.answer_key)
        p_lab[i] = float(probe.correct)
        p_tok[i] = prompt + probe.generated_tokens
        p_lat[i] = latency.predict(1, probe.generated_tokens)
        rng = random.Random(f"{seed}:cascade:{q}")
        _escalate(probe, rest, targets, prompt, latency, rng, resamples,
                  e_lab[i], e_tok[i], e_lat[i])
        e_tok[i] += p_tok[i]
        e_lat[i] += p_lat[i]
    return CascadeOutcomes(list(query_ids), tuple(targets), conf, p_lab, p_tok, p_lat,
                           e_lab, e_tok, e_lat)


def _escalate(
    probe: SampleOutcome, pool: Sequence[SampleOutcome], targets: Sequence[CascadeTarget],
    prompt: int, latency: LatencyModel, rng: random.Random, resamples: int,
    label: np.ndarray, tokens: np.ndarray, lat: np.ndarray,
) -> None:
    """Stage 2 of one query, bootstrapped from `pool`: fills label/tokens/lat per target."""
    for k, t in enumerate(targets):
        if not 1 <= t.n <= len(pool):
            raise TidalConfigError(f"{t.name}: stage 2 needs n <= {len(pool)} samples.")
        reps = 1 if t.n == len(pool) else resamples
        labels, toks, lats = [], [], []
        for _ in range(reps):
            sub = rng.sample(list(pool), t.n)
            voters = [probe, *sub] if t.probe_votes else sub
            labels.append(vote_expected_correct(voters, t.selector))  # type: ignore[arg-type]
            toks.append(prompt + sum(s.generated_tokens for s in sub))
            lats.append(latency.predict(t.n, max(s.generated_tokens for s in sub)))
        label[k] = np.mean(labels)
        tokens[k] = np.mean(toks)
        lat[k] = np.mean(lats)


def _pick(grid: np.ndarray, cost_col: int, budget: float) -> int | None:
    """The most accurate policy within `budget` (cheapest, then most stopping, among ties)."""
    ok = np.flatnonzero(grid[:, cost_col] <= budget * (1 + 1e-9))
    if len(ok) == 0:
        return None
    best = grid[ok, 2].max()
    tied = ok[np.isclose(grid[ok, 2], best)]
    return int(tied[np.lexsort((-grid[tied, 5], grid[tied, cost_col]))[0]])


def fit_cascade(
    train: CascadeOutcomes, budgets: dict[str, float], thresholds: Sequence[float] = THRESHOLDS
) -> dict[str, tuple[float, int] | None]:
    """Per budget ('latency' / 'tokens': the training static best's mean cost), (threshold, k)."""
    grid = train.grid(thresholds)
    out: dict[str, tuple[float, int] | None] = {}
    for key, col in (("latency", 4), ("tokens", 3)):
        j = _pick(grid, col, budgets[key])
        out[key] = None if j is None else (thresholds[int(grid[j, 0])], int(grid[j, 1]))
    return out


def load_cascade_inputs(outcome_file: Path) -> tuple[dict[str, dict[str, Any]], LatencyModel]:
    """The sample records and the latency fit that go with an outcome file."""
    samples, lat = side_file(outcome_file, "samples"), side_file(outcome_file, "latency")
    for f in (samples, lat):
        if not f.exists():
            raise TidalConfigError(
                f"{f} does not exist; the cascade needs it beside {outcome_file}."
            )
    records = {r["query_id"]: r for r in read_rows(samples)}
    model = LatencyModel.fit([LatencyMeasurement(**m) for m in read_rows(lat)])
    return records, model


def cascade_figures(
    records: dict[str, dict[str, Any]],
    latency: LatencyModel,
    prompt_tokens: dict[str, int],
    train_ids: Sequence[str],
    test_ids: Sequence[str],
    train_budgets: dict[str, float],
    test_budgets: dict[str, float],
    seed: int = 0,
) -> dict[str, Any]:
    """Fit on `train_ids`, evaluate on `test_ids`; budgets: each split's static best's costs."""
    tr = cascade_outcomes(records, train_ids, latency, prompt_tokens, seed=seed)
    te = cascade_outcomes(records, test_ids, latency, prompt_tokens, seed=seed)
    fitted = fit_cascade(tr, train_budgets)
    out: dict[str, Any] = {
        "probe": "sample #0 of the T=0.7 request (greedy was collected without log-probs)",
        "probe_only": dict(zip(("accuracy", "tokens", "latency_s"),
                               te.evaluate(-1.0, 0)[:3], strict=True)),
    }
    for key, cost in (("latency", "latency_s"), ("tokens", "tokens")):
        choice = fitted[key]
        if choice is None:
            out[f"at_matched_{key}"] = None
            continue
        t, k = choice
        acc, tok, lat, stopped = te.evaluate(t, k)
        tr_acc, tr_tok, tr_lat, tr_stop = tr.evaluate(t, k)
        point = {"accuracy": acc, "tokens": tok, "latency_s": lat}
        out[f"at_matched_{key}"] = {
            **point, "threshold": t, "escalate_to": te.targets[k].name, "stopped_fraction": stopped,
            "within_budget": bool(point[cost] <= test_budgets[key] * (1 + 1e-9)),
            "train": {"accuracy": tr_acc, "tokens": tr_tok, "latency_s": tr_lat,
                      "stopped_fraction": tr_stop, "budget": float(train_budgets[key])},
        }
    # diagnostics on the held-out labels (hindsight: NOT a result, only a ceiling)
    grid = te.grid()
    hind: dict[str, Any] = {}
    for key, col in (("latency", 4), ("tokens", 3)):
        j = _pick(grid, col, test_budgets[key])
        hind[key] = None if j is None else {
            "accuracy": float(grid[j, 2]), "tokens": float(grid[j, 3]),
            "latency_s": float(grid[j, 4]), "threshold": THRESHOLDS[int(grid[j, 0])],
            "escalate_to": te.targets[int(grid[j, 1])].name}
    out["hindsight_best_threshold_on_held_out"] = hind
    out["hindsight_per_query_ceiling"] = float(
        np.maximum(te.probe_label, te.escalated_label.max(axis=1)).mean())
    return out


# ------------------------------------------------------- the greedy probe
# Greedy collected again with log-probs (`collect --greedy-logprobs-only`,
# ``greedy-*.jsonl.gz``): stage 1 is the greedy request (its real answer and
# tokens), its confidence `greedy_probe_confidence` (mean / min token log-prob,
# or "an answer parses"; the method chosen by cross-validation on the training
# split), stage 2 a best-of-N request bootstrapped from all 16 T=0.7 samples,
# the greedy answer voting along or not (both are targets).

#: stage 2 of the greedy cascade: 4, 8 or 16 fresh samples, greedy voting along or not
GREEDY_TARGETS = tuple(CascadeTarget(n, s, votes, "greedy")
                       for n in (4, 8, 16) for s in SELECTORS for votes in (True, False))
#: thresholds searched on the training queries (min log-prob confidences are small)
GREEDY_THRESHOLDS = tuple(float(t) for t in np.round(np.arange(0.0, 1.0001, 0.0125), 4))
#: cross-validation of the choices on the training split
CV_FOLDS, CV_REPEATS = 5, 3


def load_greedy_records(outcome_file: Path) -> dict[str, dict[str, Any]] | None:
    """The greedy-with-log-probs records beside an outcome file, or None if absent."""
    path = side_file(outcome_file, "greedy")
    return {r["query_id"]: r for r in read_rows(path)} if path.exists() else None


def _greedy_outcome(rec: dict[str, Any]) -> SampleOutcome:
    return SampleOutcome(rec["answer_key"], bool(rec["correct"]), int(rec["generated_tokens"]),
                         rec["mean_logprob"], rec["finish_reason"])


def greedy_confidences(
    greedy: dict[str, dict[str, Any]], query_ids: Sequence[str]
) -> dict[str, np.ndarray]:
    """Per confidence method, the greedy probe's confidence of each query."""
    from tidal_agents.selection.confidence import (
        PROBE_CONFIDENCE_METHODS,
        greedy_probe_confidence,
    )

    return {m: np.array([greedy_probe_confidence(greedy[q]["token_logprobs"],
                                                 greedy[q]["answer_key"], m)  # type: ignore[arg-type]
                         for q in query_ids])
            for m in PROBE_CONFIDENCE_METHODS}


def greedy_cascade_outcomes(
    records: dict[str, dict[str, Any]],
    greedy: dict[str, dict[str, Any]],
    query_ids: Sequence[str],
    latency: LatencyModel,
    prompt_tokens: dict[str, int],
    method: str = "mean",
    targets: Sequence[CascadeTarget] = GREEDY_TARGETS,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> CascadeOutcomes:
    """Greedy probe (regenerated, with log-probs) and escalation outcomes of `query_ids`.

    The probe's label, answer and tokens are the regenerated greedy's; stage 2
    is bootstrapped from all of the query's T=0.7 samples; costs sum both stages.
    """
    q_n, k_n = len(query_ids), len(targets)
    p_lab, p_tok, p_lat = (np.zeros(q_n) for _ in range(3))
    e_lab, e_tok, e_lat = (np.zeros((q_n, k_n)) for _ in range(3))
    for i, q in enumerate(query_ids):
        if q not in records or q not in greedy:
            raise TidalConfigError(f"query {q} has no samples or greedy record.")
        g = _greedy_outcome(greedy[q])
        pool = [SampleOutcome(**s) for s in records[q]["samples"]]
        prompt = int(prompt_tokens[q])
        p_lab[i] = float(g.correct)
        p_tok[i] = prompt + g.generated_tokens
        p_lat[i] = latency.predict(1, g.generated_tokens)
        _escalate(g, pool, targets, prompt, latency, random.Random(f"{seed}:greedy-cascade:{q}"),
                  resamples, e_lab[i], e_tok[i], e_lat[i])
        e_tok[i] += p_tok[i]
        e_lat[i] += p_lat[i]
    conf = greedy_confidences(greedy, query_ids)[method]
    return CascadeOutcomes(list(query_ids), tuple(targets), conf, p_lab, p_tok, p_lat,
                           e_lab, e_tok, e_lat)


def _folds(query_ids: Sequence[str], repeat: int, seed: int = 0) -> np.ndarray:
    from tidal_agents.evaluation.train import cv_fold

    return np.array([cv_fold(q, CV_FOLDS, repeat, seed) for q in query_ids])


def cv_threshold_policy(
    train: CascadeOutcomes, budgets: dict[str, float],
    thresholds: Sequence[float] = GREEDY_THRESHOLDS, seed: int = 0,
) -> dict[str, dict[str, float] | None]:
    """Cross-validated (query-grouped, pooled out-of-fold) threshold cascade on `train`.

    Each fold's (threshold, target) is fitted on the other folds; the pooled
    out-of-fold decisions are scored. Per budget: mean accuracy / cost over repeats.
    """
    out: dict[str, dict[str, float] | None] = {}
    for key, cost in (("latency", "latency_s"), ("tokens", "tokens")):
        accs, costs = [], []
        for rep in range(CV_REPEATS):
            fold = _folds(train.query_ids, rep, seed)
            acc, cst = np.zeros(len(fold)), np.zeros(len(fold))
            for f in range(CV_FOLDS):
                held = np.flatnonzero(fold == f)
                fit = fit_cascade(train.subset(np.flatnonzero(fold != f)), budgets,
                                  thresholds)[key]
                if fit is None or len(held) == 0:
                    continue
                t, k = fit
                h = train.subset(held)
                stop = h.confidence >= t
                acc[held] = np.where(stop, h.probe_label, h.escalated_label[:, k])
                col = h.escalated_latency if key == "latency" else h.escalated_tokens
                base = h.probe_latency if key == "latency" else h.probe_tokens
                cst[held] = np.where(stop, base, col[:, k])
            accs.append(acc.mean())
            costs.append(cst.mean())
        out[key] = {"accuracy": float(np.mean(accs)), cost: float(np.mean(costs))}
    return out


# ------------------------------------------- predictor + probe (per query)
def _probe_vector(rec: dict[str, Any]) -> list[float]:
    """Greedy probe features (never its correctness): log-probs, length, parse, truncation."""
    lps = [float(x) for x in rec["token_logprobs"] if x is not None and np.isfinite(x)]
    mean = float(np.mean(lps)) if lps else -10.0
    low = float(min(lps)) if lps else -10.0
    return [mean, low, float(np.exp(mean)), float(np.exp(low)),
            float(np.log2(1 + rec["generated_tokens"])), float(rec["answer_key"] is not None),
            float(rec["finish_reason"] == "length")]


class ProbePredictor:
    """P(right) of each option (0: stop at greedy; 1..K: escalate to target k).

    Logistic regression (scikit-learn) on standardised query features
    (`StepFeatures`, as the accuracy predictor) + greedy probe features, the
    option one-hot, and the standardised features' products with "stop" and
    with log2 n of the option; soft labels as weighted positives/negatives.
    """

    def __init__(self, targets: Sequence[CascadeTarget], c: float = 1.0) -> None:
        self.targets = tuple(targets)
        self.c = c
        self.scale: tuple[np.ndarray, np.ndarray] | None = None
        self.model: Any = None

    def _inputs(self, base: np.ndarray) -> np.ndarray:
        """Q x F base features -> (Q * (K + 1)) x D model inputs, query-major."""
        assert self.scale is not None
        z = (base - self.scale[0]) / self.scale[1]
        k1 = len(self.targets) + 1
        log_n = np.array([0.0, *(np.log2(t.n) for t in self.targets)])
        rows = []
        for o in range(k1):
            onehot = np.zeros((len(z), k1))
            onehot[:, o] = 1.0
            rows.append(np.hstack([onehot, z, z * float(o == 0), z * log_n[o]]))
        return np.stack(rows, axis=1).reshape(len(z) * k1, -1)

    def fit(self, base: np.ndarray, labels: np.ndarray) -> ProbePredictor:
        """`labels`: Q x (K + 1) soft labels (option 0: the greedy's own 0/1)."""
        from sklearn.linear_model import LogisticRegression
        from threadpoolctl import threadpool_limits

        std = base.std(axis=0)
        self.scale = (base.mean(axis=0), np.where(std > 0, std, 1.0))
        x = self._inputs(base)
        y = labels.reshape(-1)
        xx, yy = np.vstack([x, x]), np.concatenate([np.ones(len(y)), np.zeros(len(y))])
        ww = np.concatenate([y, 1 - y])
        keep = ww > 0
        with threadpool_limits(1):
            self.model = LogisticRegression(C=self.c, max_iter=3000).fit(
                xx[keep], yy[keep], sample_weight=ww[keep])
        return self

    def predict(self, base: np.ndarray) -> np.ndarray:
        p = self.model.predict_proba(self._inputs(base))[:, 1]
        return p.reshape(len(base), len(self.targets) + 1)


def probe_matrices(
    co: CascadeOutcomes,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, tokens, latency), Q x (K + 1): option 0 stops at the probe."""
    return (np.column_stack([co.probe_label, co.escalated_label]),
            np.column_stack([co.probe_tokens, co.escalated_tokens]),
            np.column_stack([co.probe_latency, co.escalated_latency]))


def _lambdas(tokens_hat: np.ndarray, latency_hat: np.ndarray,
             points: int = 30) -> tuple[np.ndarray, np.ndarray]:
    lam_t = np.concatenate([[0.0], np.geomspace(1e-3, 10, points - 1) / tokens_hat.max()])
    lam_l = np.concatenate([[0.0], np.geomspace(1e-3, 10, points - 1) / latency_hat.max()])
    return lam_t, lam_l


def _sweep_points(acc_hat: np.ndarray, labels: np.ndarray, tokens: np.ndarray,
                  latency: np.ndarray, tokens_hat: np.ndarray, latency_hat: np.ndarray,
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(points P x 3 [acc, tokens, latency], choices P x Q, lambdas P x 2) of the utility rule."""
    from tidal_agents.bench.allocation import evaluate_choices, sweep

    lam_t, lam_l = _lambdas(tokens_hat, latency_hat)
    choices, lambdas = sweep(acc_hat, tokens_hat, latency_hat, lam_t, lam_l)
    return evaluate_choices(choices, labels, tokens, latency), choices, lambdas


def predictor_probe_figures(
    train: CascadeOutcomes, test: CascadeOutcomes,
    train_base: np.ndarray, test_base: np.ndarray,
    train_budgets: dict[str, float], test_budgets: dict[str, float], seed: int = 0,
) -> dict[str, Any]:
    """Predictor + probe: lambda chosen by CV on the training split, evaluated once held out.

    Costs in the utility are the per-option training means (escalation includes
    the greedy stage). Also reported: the held-out sweep point the bench's
    predictor policy would be credited with (its lambda picked on held-out labels).
    """
    from tidal_agents.bench.allocation import matched

    names = ["greedy (stop)", *(t.name for t in train.targets)]
    lab_tr, tok_tr, lat_tr = probe_matrices(train)
    tokens_hat, latency_hat = tok_tr.mean(axis=0), lat_tr.mean(axis=0)
    # cross-validated choice of lambda, per budget, on the training split
    cv_points = []
    for rep in range(CV_REPEATS):
        fold = _folds(train.query_ids, rep, seed)
        acc_hat = np.zeros_like(lab_tr)
        for f in range(CV_FOLDS):
            held = np.flatnonzero(fold == f)
            fit = np.flatnonzero(fold != f)
            if len(held) == 0:
                continue
            model = ProbePredictor(train.targets).fit(train_base[fit], lab_tr[fit])
            acc_hat[held] = model.predict(train_base[held])
        pts, _, lambdas = _sweep_points(acc_hat, lab_tr, tok_tr, lat_tr, tokens_hat, latency_hat)
        cv_points.append(pts)
    cv_mean = np.mean(cv_points, axis=0)
    model = ProbePredictor(train.targets).fit(train_base, lab_tr)
    lab_te, tok_te, lat_te = probe_matrices(test)
    pts, choices, lambdas = _sweep_points(model.predict(test_base), lab_te, tok_te, lat_te,
                                          tokens_hat, latency_hat)
    out: dict[str, Any] = {}
    for key, col in (("latency", 2), ("tokens", 1)):
        j = matched(cv_mean, col, train_budgets[key])
        jb = matched(pts, col, test_budgets[key])
        bench_rule = None if jb is None else {
            "accuracy": float(pts[jb, 0]), "tokens": float(pts[jb, 1]),
            "latency_s": float(pts[jb, 2])}
        if j is None:
            out[f"at_matched_{key}"] = None
            out[f"bench_rule_{key}"] = bench_rule
            continue
        used = np.bincount(choices[j], minlength=len(names))
        out[f"at_matched_{key}"] = {
            "accuracy": float(pts[j, 0]), "tokens": float(pts[j, 1]),
            "latency_s": float(pts[j, 2]),
            "lambda_tokens": float(lambdas[j, 0]), "lambda_latency": float(lambdas[j, 1]),
            "options_used": {names[k]: int(c) for k, c in enumerate(used) if c},
            "stopped_fraction": float(used[0] / len(choices[j])),
            "within_budget": bool(pts[j, col] <= test_budgets[key] * (1 + 1e-9)),
            "train_cv": {"accuracy": float(cv_mean[j, 0]), "tokens": float(cv_mean[j, 1]),
                         "latency_s": float(cv_mean[j, 2]),
                         "budget": float(train_budgets[key])},
        }
        out[f"bench_rule_{key}"] = bench_rule
    return out


def greedy_cascade_figures(
    records: dict[str, dict[str, Any]],
    greedy: dict[str, dict[str, Any]],
    latency: LatencyModel,
    rows: Sequence[dict[str, Any]],
    train_ids: Sequence[str],
    test_ids: Sequence[str],
    train_budgets: dict[str, float],
    test_budgets: dict[str, float],
    seed: int = 0,
) -> dict[str, Any]:
    """The greedy-probe cascade and predictor + probe, fitted on `train_ids` only.

    Threshold cascade: the confidence method (mean / min / parses) is the one
    with the highest cross-validated accuracy on the training split (each
    budget separately, within the training static best's cost); threshold and
    target are then fitted on the whole training split (`fit_cascade`) and the
    one policy is evaluated on `test_ids`.
    """
    from tidal_agents.evaluation.train import row_features

    prompt_tokens = {r["query_id"]: int(r["prompt_tokens"]) for r in rows}
    tr = greedy_cascade_outcomes(records, greedy, train_ids, latency, prompt_tokens, seed=seed)
    te = greedy_cascade_outcomes(records, greedy, test_ids, latency, prompt_tokens, seed=seed)
    conf_tr, conf_te = greedy_confidences(greedy, train_ids), greedy_confidences(greedy, test_ids)
    cv = {m: cv_threshold_policy(replace(tr, confidence=conf_tr[m]), train_budgets, seed=seed)
          for m in conf_tr}
    out: dict[str, Any] = {
        "probe": "greedy, regenerated with log-probs (greedy-*.jsonl.gz)",
        "probe_only": dict(zip(("accuracy", "tokens", "latency_s"),
                               te.evaluate(-1.0, 0)[:3], strict=True)),
        "cv_by_method": cv,
    }
    for key, cost in (("latency", "latency_s"), ("tokens", "tokens")):
        ok = {m: v[key] for m, v in cv.items() if v[key] is not None}
        if not ok:
            out[f"at_matched_{key}"] = None
            continue
        method = max(ok, key=lambda m: (ok[m]["accuracy"], -ok[m][cost]))  # type: ignore[index]
        a, b = replace(tr, confidence=conf_tr[method]), replace(te, confidence=conf_te[method])
        choice = fit_cascade(a, train_budgets, GREEDY_THRESHOLDS)[key]
        if choice is None:
            out[f"at_matched_{key}"] = None
            continue
        t, k = choice
        acc, tok, lat, stopped = b.evaluate(t, k)
        tr_acc, tr_tok, tr_lat, tr_stop = a.evaluate(t, k)
        point = {"accuracy": acc, "tokens": tok, "latency_s": lat}
        out[f"at_matched_{key}"] = {
            **point, "confidence": method, "threshold": t, "escalate_to": b.targets[k].name,
            "stopped_fraction": stopped,
            "within_budget": bool(point[cost] <= test_budgets[key] * (1 + 1e-9)),
            "train": {"accuracy": tr_acc, "tokens": tr_tok, "latency_s": tr_lat,
                      "stopped_fraction": tr_stop, "budget": float(train_budgets[key])},
        }
    # diagnostics on held-out labels (hindsight: NOT results, only ceilings)
    hind: dict[str, Any] = {}
    for m in conf_te:
        grid = replace(te, confidence=conf_te[m]).grid(GREEDY_THRESHOLDS)
        for key, col in (("latency", 4), ("tokens", 3)):
            j = _pick(grid, col, test_budgets[key])
            hind[f"{m}_{key}"] = None if j is None else {
                "accuracy": float(grid[j, 2]), "tokens": float(grid[j, 3]),
                "latency_s": float(grid[j, 4]), "threshold": GREEDY_THRESHOLDS[int(grid[j, 0])],
                "escalate_to": te.targets[int(grid[j, 1])].name}
    out["hindsight_best_threshold_on_held_out"] = hind
    out["hindsight_per_query_ceiling"] = float(
        np.maximum(te.probe_label, te.escalated_label.max(axis=1)).mean())
    # predictor + probe
    by_q = {r["query_id"]: r for r in rows}

    def base(ids: Sequence[str]) -> np.ndarray:
        return np.array([row_features(by_q[q]).vector_values() + _probe_vector(greedy[q])
                         for q in ids])

    out["predictor_probe"] = predictor_probe_figures(
        tr, te, base(train_ids), base(test_ids), train_budgets, test_budgets, seed)
    return out
