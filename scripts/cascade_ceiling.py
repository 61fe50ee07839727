"""How far a greedy-confidence cascade could go on the committed outcome set (offline).

The greedy reply's mean token log-prob (collected with every step's samples)
separates right from wrong greedy replies well on tool-call and text steps. A
cascade returns greedy when it is confident and escalates to bo16-majority
otherwise. This script prints:

* the AUC of greedy's mean log-prob for greedy's correctness, per step kind;
* the cascade at global confidence quantiles (accuracy, generated tokens:
  greedy's plus bo16's when escalated);
* its **in-sample ceiling**: per kind, the threshold chosen on the very steps it
  is scored on. This is an upper bound, not a result.

    .venv/bin/python scripts/cascade_ceiling.py

No engine; reads tidal_agents/data/{outcomes,samples}-steps.jsonl.gz.
"""

from __future__ import annotations

import collections
import gzip
import json
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

DATA = Path(__file__).resolve().parent.parent / "tidal_agents" / "data"
ESCALATION = "bo16-majority"


def main() -> int:
    with gzip.open(DATA / "samples-steps.jsonl.gz", "rt") as fh:
        samples = {r["query_id"]: r for r in map(json.loads, fh)}
    outcomes: dict[str, dict[str, dict]] = collections.defaultdict(dict)
    with gzip.open(DATA / "outcomes-steps.jsonl.gz", "rt") as fh:
        for r in map(json.loads, fh):
            outcomes[r["query_id"]][r["config"]] = r
    steps = sorted(outcomes)
    conf = np.array([samples[q]["greedy"]["mean_logprob"] for q in steps])
    kinds = np.array([outcomes[q]["greedy"]["kind"] for q in steps])

    def column(config: str, key: str) -> np.ndarray:
        return np.array([outcomes[q][config][key] for q in steps], float)

    greedy, greedy_tokens = column("greedy", "soft_label"), column("greedy", "generated_tokens")
    up, up_tokens = column(ESCALATION, "soft_label"), column(ESCALATION, "generated_tokens")
    print(f"steps {len(steps)}; greedy {greedy.mean():.3f} @ {greedy_tokens.mean():.0f} tokens; "
          f"{ESCALATION} {up.mean():.3f} @ {up_tokens.mean():.0f}")
    print(f"AUC of greedy's mean log-prob for greedy correct: all "
          f"{roc_auc_score(greedy, conf):.3f}", end="")
    for kind in sorted(set(kinds)):
        m = kinds == kind
        print(f", {kind} {roc_auc_score(greedy[m], conf[m]):.3f}", end="")
    print()
    for share in (0.2, 0.4, 0.6, 0.8):
        escalate = conf < np.quantile(conf, share)
        acc = np.where(escalate, up, greedy).mean()
        tokens = (greedy_tokens + np.where(escalate, up_tokens, 0.0)).mean()
        print(f"cascade, escalating the {share:.0%} least confident: {acc:.3f} @ {tokens:.0f}")
    total = 0.0
    for kind in sorted(set(kinds)):
        m = kinds == kind
        best = max(np.where(conf[m] < t, up[m], greedy[m]).mean()
                   for t in np.unique(np.r_[conf[m], 1.0]))
        print(f"in-sample ceiling, {kind} ({m.sum()} steps): {best:.3f} "
              f"(greedy {greedy[m].mean():.3f}, {ESCALATION} {up[m].mean():.3f})")
        total += best * m.sum()
    print(f"in-sample ceiling, all steps: {total / len(steps):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
