"""The paper's probe vs our surface features as the allocation predictor, offline.

The seed paper's accuracy predictor reads the generator's last-layer hidden
state at the final prompt token. This script measures whether that probe
decides allocation better than the surface features the shipped predictor uses
(`StepFeatures`), on the committed step outcomes
(``tidal_agents/data/outcomes-steps.jsonl.gz``), by the query-grouped
cross-validation of `bench allocation` (`evaluation.cross_validated`).

1. Every step of the collection is rendered as the chat model rendered it
   (`collect.prepare`, i.e. `step.prepare.prepare_step`) through a
   tokenizer-only stand-in for the engine (the model folder's own tokenizer and
   chat template); each rendering's token count must equal the row's
   ``prompt_tokens``.
2. The embedded model (same weights, transformers on CPU, one thread) runs one
   forward pass per rendered prompt; the probe is the last layer's hidden state
   (after the final norm) at the last prompt token. Each pass is timed: that is
   the probe's per-step cost, added to the adaptive policy's latency.
3. `cross_validated_allocation` runs with the shipped recipe and with
   `evaluation.probe.ProbePredictor` on three feature sets (surface, probe,
   surface+probe), all fitted inside the training folds.

    OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python scripts/bench_probe.py \
        --out docs/results/probe.json

Hidden states are cached under $TIDAL_AGENTS_HOME/probe/ (``--recompute`` to redo).
No vLLM is started.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tidal_agents.bench.results import results_document  # noqa: E402
from tidal_agents.errors import TidalConfigError  # noqa: E402
from tidal_agents.evaluation.collect import CollectSettings, load_steps, prepare  # noqa: E402
from tidal_agents.evaluation.cross_validated import cross_validated_allocation  # noqa: E402
from tidal_agents.evaluation.probe import FEATURE_SETS, ProbePredictor  # noqa: E402
from tidal_agents.evaluation.train import (  # noqa: E402
    DEFAULT_ESTIMATOR,
    data_dir,
    load_outcomes,
)
from tidal_agents.models import embedded_model_dir  # noqa: E402
from tidal_agents.paths import home_dir  # noqa: E402

#: the command that made the committed collection (`tidal-agents collect ... --seed 0`)
COLLECTION_TASKS = ("arith:60", "gsm8k:12", "agent:60")
COLLECTION_SEED = 0
OUTCOMES = "outcomes-steps.jsonl.gz"


class TokenizerEngine:
    """What `prepare_step` asks of an engine, from the model folder's tokenizer alone
    (the same calls `engine._backend` makes)."""

    def __init__(self, tokenizer: Any, max_model_len: int) -> None:
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len

    def apply_chat_template(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> str:
        kwargs: dict[str, Any] = {"tokenize": False, "add_generation_prompt": True}
        if tools:
            kwargs["tools"] = tools
        return str(self.tokenizer.apply_chat_template(messages, **kwargs))

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def count_tokens(self, text: str) -> int:
        return len(self.encode(text))


def rendered_prompts(model_dir: Path, rows: list[dict[str, Any]]) -> dict[str, list[int]]:
    """query id -> the prompt's token ids, checked against the rows' ``prompt_tokens``."""
    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    engine = TokenizerEngine(tokenizer, AutoConfig.from_pretrained(model_dir)
                             .max_position_embeddings)
    counted = {r["query_id"]: int(r["prompt_tokens"]) for r in rows}
    settings = CollectSettings()
    out: dict[str, list[int]] = {}
    for step in load_steps(COLLECTION_TASKS, seed=COLLECTION_SEED):
        if step.id not in counted:
            continue
        prepared = prepare(engine, step, settings)
        ids = engine.encode(prepared.prompt)
        if len(ids) != counted[step.id]:
            raise TidalConfigError(f"{step.id}: rendered {len(ids)} prompt tokens, the "
                                   f"collection recorded {counted[step.id]}.")
        out[step.id] = ids
    missing = set(counted) - set(out)
    if missing:
        raise TidalConfigError(f"{len(missing)} queries not rendered, e.g. {sorted(missing)[:3]}")
    return out


def hidden_states(
    model_dir: Path, prompts: dict[str, list[int]], dtype_name: str, warmup: int = 3,
) -> tuple[dict[str, np.ndarray], dict[str, dict[str, float]]]:
    """query id -> last-layer hidden state at the last prompt token (float32), and the
    seconds each forward pass took: wall and this thread's CPU time (on a shared machine
    the CPU time is the cost the pass would have alone on one core)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype_name]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval()
    qids = list(prompts)
    states: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    cpu_seconds: dict[str, float] = {}
    with torch.inference_mode():
        for q in qids[:warmup]:  # first calls allocate; not the steady per-step cost
            model.model(input_ids=torch.tensor([prompts[q]]))
        for q in qids:
            t0, c0 = time.perf_counter(), time.thread_time()
            # the base model's output: the final norm applied, no LM head
            out = model.model(input_ids=torch.tensor([prompts[q]]))
            last = out.last_hidden_state[0, -1]
            seconds[q] = time.perf_counter() - t0
            cpu_seconds[q] = time.thread_time() - c0
            states[q] = last.float().numpy().copy()
    return states, {"wall": seconds, "cpu": cpu_seconds}


def cost_summary(seconds: dict[str, dict[str, float]], prompts: dict[str, list[int]]
                 ) -> dict[str, Any]:
    """Per-step cost of the probe: wall and CPU seconds (mean, median, p90, max)."""
    tokens = [len(prompts[q]) for q in seconds["wall"]]
    out: dict[str, Any] = {"steps": len(tokens), "mean_prompt_tokens": statistics.fmean(tokens),
                           "max_prompt_tokens": max(tokens)}
    for clock, per_step in seconds.items():
        values = list(per_step.values())
        out[clock] = {"mean_s": statistics.fmean(values), "median_s": statistics.median(values),
                      "p90_s": float(np.percentile(values, 90)), "max_s": max(values)}
    return out


def load_or_compute(args: argparse.Namespace, rows: list[dict[str, Any]]
                    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    model_dir = embedded_model_dir()
    cache = home_dir() / "probe" / f"hidden-steps-{args.dtype}.npz"
    prompts = rendered_prompts(model_dir, rows)
    if cache.exists() and not args.recompute:
        data = np.load(cache, allow_pickle=False)
        states = dict(zip(data["qids"].tolist(), data["states"], strict=True))
        timing = json.loads(str(data["timing"]))
        if set(states) == set(prompts):
            return states, timing
    states, seconds = hidden_states(model_dir, prompts, args.dtype)
    timing = {"dtype": args.dtype, "threads": 1, "model_dir": model_dir.name,
              "busy_machine_note": args.machine_note, **cost_summary(seconds, prompts)}
    cache.parent.mkdir(parents=True, exist_ok=True)
    qids = sorted(states)
    np.savez_compressed(cache, qids=np.array(qids), states=np.stack([states[q] for q in qids]),
                        timing=np.array(json.dumps(timing)))
    return states, timing


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_probe", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=None, help="results JSON (e.g. docs/results/"
                   "probe.json); printed when not given")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="bfloat16",
                   help="the forward pass's dtype (bfloat16: the weights' and the CPU engine's)")
    p.add_argument("--recompute", action="store_true", help="ignore cached hidden states")
    p.add_argument("--hidden-only", action="store_true",
                   help="render, compute and time the hidden states, then stop")
    p.add_argument("--feature-sets", nargs="*", default=list(FEATURE_SETS),
                   choices=FEATURE_SETS)
    p.add_argument("--fixed", nargs=2, type=float, metavar=("C", "DIMS"), default=(1.0, 16),
                   help="also run every feature set at this one C and PCA dimension (the "
                   "shipped recipe's C = 1), named '<set>@C=<C>'")
    p.add_argument("--brier", action="store_true",
                   help="instead of the allocation figures: each predictor's query-grouped "
                   "cross-validated Brier score, overall and per kind of step")
    p.add_argument("--repeats", type=int, default=3, help="outer cross-validation repeats")
    p.add_argument("--machine-note", default="", help="load on the machine while timing")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    rows = load_outcomes([data_dir() / OUTCOMES])
    states, timing = load_or_compute(args, rows)
    print(json.dumps({"probe_cost": timing}, indent=2), file=sys.stderr)
    if args.hidden_only:
        return 0
    # charged per adaptive step: the pass's mean wall time as measured here (on a shared
    # machine an upper bound of its cost alone; the CPU time is reported beside it)
    overhead = float(timing["wall"]["mean_s"])
    results: dict[str, Any] = {}
    fixed_c, fixed_dims = float(args.fixed[0]), int(args.fixed[1])
    if args.brier:
        table = brier_table(rows, states, args.feature_sets, fixed_c, fixed_dims, args.repeats)
        return write({"brier": table}, args, time.perf_counter() - t0)

    def run(name: str, **kwargs: Any) -> None:
        t = time.perf_counter()
        cv = cross_validated_allocation(rows, repeats=args.repeats, **kwargs)
        cv.pop("_folds")
        results[name] = cv
        print(f"{name}: {time.perf_counter() - t:.0f} s, adaptive "
              f"{cv['adaptive']['accuracy']:.3f} vs static {cv['static_best']['accuracy']:.3f}, "
              f"gap closed {cv['gap_closed_expected_oracle']}", file=sys.stderr)

    run("shipped", estimator=DEFAULT_ESTIMATOR)
    for feature_set in args.feature_sets:
        cost = overhead if "probe" in feature_set else 0.0

        def factory(seed: int, feature_set: str = feature_set) -> ProbePredictor:
            return ProbePredictor(feature_set, states, random_state=seed)

        run(feature_set, estimator=f"probe-{feature_set}", predictor_factory=factory,
            adaptive_overhead_s=cost)
    for feature_set in args.feature_sets:
        cost = overhead if "probe" in feature_set else 0.0

        def fixed(seed: int, feature_set: str = feature_set) -> ProbePredictor:
            return ProbePredictor(feature_set, states, random_state=seed, c_grid=(fixed_c,),
                                  pca_dims=(fixed_dims,))

        name = f"{feature_set}@C={fixed_c:g}" + (f",{fixed_dims}d" if "probe" in feature_set
                                                  else "")
        run(name, estimator=f"probe-{name}", predictor_factory=fixed, adaptive_overhead_s=cost)
    figures = {"probe_cost": timing, "feature_sets": results, "outcomes": OUTCOMES,
               "collection": {"tasks": list(COLLECTION_TASKS), "seed": COLLECTION_SEED}}
    return write(figures, args, time.perf_counter() - t0)


def write(figures: dict[str, Any], args: argparse.Namespace, wall_s: float) -> int:
    doc = results_document("probe", figures, args, wall_s)
    text = json.dumps(doc, indent=2) + "\n"
    if args.out:
        args.out.write_text(text)
    else:
        print(text)
    return 0


def brier_table(rows: list[dict[str, Any]], states: dict[str, np.ndarray],
                feature_sets: list[str], fixed_c: float, fixed_dims: int, repeats: int
                ) -> dict[str, Any]:
    """Query-grouped 5-fold cross-validated Brier (`train.cross_validate`, pooled
    out-of-fold predictions, mean over repeats), overall and per kind of step, of the
    shipped recipe, each feature set, and the per-kind, per-configuration mean."""
    from tidal_agents.evaluation.figures import outcome_matrices
    from tidal_agents.evaluation.train import brier, cross_validate, row_features

    qids, names, labels, _, _ = outcome_matrices(rows)
    kind_of = {r["query_id"]: str(row_features(r).answer_kind) for r in rows}
    kinds = np.array([kind_of[q] for q in qids])
    runs = ~np.isnan(labels)

    def scores(acc_hats: list[np.ndarray]) -> dict[str, float]:
        out = {"all": float(np.mean([brier(a[runs], labels[runs]) for a in acc_hats]))}
        for k in sorted(set(kinds)):
            m = runs & (kinds == k)[:, None]
            out[str(k)] = float(np.mean([brier(a[m], labels[m]) for a in acc_hats]))
        return out

    table: dict[str, Any] = {}
    factories: dict[str, Any] = {"shipped": None}
    for fs in feature_sets:
        factories[fs] = (lambda seed, fs=fs: ProbePredictor(fs, states, random_state=seed))
        factories[f"{fs}@C={fixed_c:g}"] = (lambda seed, fs=fs: ProbePredictor(
            fs, states, random_state=seed, c_grid=(fixed_c,), pca_dims=(fixed_dims,)))
    for name, factory in factories.items():
        t = time.perf_counter()
        cv = cross_validate(rows, DEFAULT_ESTIMATOR if factory is None else name,
                            repeats=repeats, keep_predictions=True, predictor_factory=factory)
        table[name] = scores(cv["_oof"]["acc_hat"])
        print(f"brier {name}: {table[name]} ({time.perf_counter() - t:.0f} s)", file=sys.stderr)
    # a query-blind reference: each kind's mean soft label per configuration, out of fold
    blind = cross_validate(rows, "kind_config_mean", repeats=repeats, keep_predictions=True,
                           predictor_factory=lambda seed: KindConfigMean())
    table["kind_config_mean"] = scores(blind["_oof"]["acc_hat"])
    return table


class KindConfigMean:
    """Predicts each row's kind-and-configuration mean soft label of the rows it was fitted
    on (a predictor blind to the query within its kind)."""

    def fit_outcome_rows(self, rows: list[dict[str, Any]]) -> KindConfigMean:
        from tidal_agents.evaluation.train import row_features

        sums: dict[tuple[str, str], list[float]] = {}
        for r in rows:
            key = (str(row_features(r).answer_kind), r["config"])
            sums.setdefault(key, []).append(float(r["soft_label"]))
        self.means = {k: float(np.mean(v)) for k, v in sums.items()}
        return self

    def predict_outcome_rows(self, rows: list[dict[str, Any]]) -> np.ndarray:
        from tidal_agents.evaluation.train import row_features

        return np.array([self.means[(str(row_features(r).answer_kind), r["config"])]
                         for r in rows])


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
