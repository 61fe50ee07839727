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
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
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
    """Stage 2: `n` fresh samples, `selector` vote over them and the probe."""

    n: int
    selector: str

    @property
    def name(self) -> str:
        return f"probe+bo{self.n}-{self.selector}"


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
        for k, t in enumerate(targets):
            if not 1 <= t.n <= len(rest):
                raise TidalConfigError(f"{t.name}: stage 2 needs n <= {len(rest)} samples.")
            reps = 1 if t.n == len(rest) else resamples
            labels, toks, lats = [], [], []
            for _ in range(reps):
                sub = rng.sample(rest, t.n)
                labels.append(vote_expected_correct([probe, *sub], t.selector))  # type: ignore[arg-type]
                toks.append(prompt + sum(s.generated_tokens for s in sub))
                lats.append(latency.predict(t.n, max(s.generated_tokens for s in sub)))
            e_lab[i, k] = np.mean(labels)
            e_tok[i, k] = p_tok[i] + np.mean(toks)
            e_lat[i, k] = p_lat[i] + np.mean(lats)
    return CascadeOutcomes(list(query_ids), tuple(targets), conf, p_lab, p_tok, p_lat,
                           e_lab, e_tok, e_lat)


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
