"""Choosing one candidate among many: votes over answers, or a scorer.

Every selector returns a `Selection`: the chosen index plus the tally that
explains it. Ties are broken deterministically so reruns pick the same sample.

- ``first``: the first candidate (what a single sample would give).
- ``majority``: self-consistency (Wang et al. 2023). One vote per candidate with
  an extractable answer; a tie goes to the answer with the larger summed
  confidence, then to the one that appeared first.
- ``confidence``: the same vote, each ballot weighted by the sample's
  confidence (see `confidence.py`); ties go to the larger head count, then first.
- ``tool_vote``: majority over canonical tool calls (ids, key order and 2 vs 2.0
  do not matter).
- ``scorer``: the highest score from a `Scorer`, ties to the first.

Candidates without an extractable answer do not vote. When none has one, the
candidate with the highest mean log-prob wins (rule ``fallback_logprob``).
Within the winning answer, the most confident member is returned.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from tidal_agents.errors import TidalConfigError
from tidal_agents.selection.answers import canonical_answer
from tidal_agents.selection.confidence import ConfidenceMethod, confidence
from tidal_agents.selection.scorers import Scorer
from tidal_agents.types import AnswerKind, Candidate, SelectorName

SELECTORS: tuple[SelectorName, ...] = ("first", "majority", "confidence", "tool_vote", "scorer")


@dataclass(frozen=True)
class Selection:
    """Which candidate won and why."""

    index: int
    #: the winning answer's voting key (None for first / scorer / fallback)
    key: str | None
    #: votes (or summed weights) per answer key
    tally: dict[str, float] = field(default_factory=dict)
    #: per-candidate weight or score, aligned with the candidates
    weights: tuple[float | None, ...] = ()
    #: the rule that decided: first, majority, confidence, tool_vote, scorer, fallback_logprob
    rule: str = "first"

    @property
    def share(self) -> float:
        """The winner's fraction of all votes (0 when nobody voted)."""
        total = sum(self.tally.values())
        return self.tally.get(self.key, 0.0) / total if self.key is not None and total else 0.0


def _conf(c: Candidate, method: ConfidenceMethod) -> float | None:
    if c.token_logprobs:
        return confidence(c.token_logprobs, method)
    return math.exp(c.mean_logprob) if c.mean_logprob is not None else None


def _best_by_logprob(indices: Sequence[int], candidates: Sequence[Candidate]) -> int:
    def mean(i: int) -> float:
        lp = candidates[i].mean_logprob
        return lp if lp is not None else -math.inf

    # max() keeps the first of equals, so ties go to the earliest index
    return max(indices, key=mean)


def vote(
    candidates: Sequence[Candidate],
    kind: AnswerKind = "math",
    weighted: bool = False,
    method: ConfidenceMethod = "lowest_window",
) -> Selection:
    """Majority (or confidence-weighted) vote over the candidates' final answers."""
    if not candidates:
        raise TidalConfigError("vote needs at least one candidate, got none.")
    keys = [canonical_answer(c.text, kind) for c in candidates]
    confs = [_conf(c, method) for c in candidates]
    voters = [i for i, k in enumerate(keys) if k is not None]
    if not voters:
        best = _best_by_logprob(range(len(candidates)), candidates)
        return Selection(best, None, {}, tuple(confs), "fallback_logprob")

    counts: dict[str, float] = {}
    weight_sums: dict[str, float] = {}
    first_seen: dict[str, int] = {}
    for i in voters:
        k = keys[i]
        assert k is not None
        counts[k] = counts.get(k, 0.0) + 1.0
        weight_sums[k] = weight_sums.get(k, 0.0) + (confs[i] or 0.0)
        first_seen.setdefault(k, i)

    if weighted:
        # A sample without log-probs still counts a little, so it is never ignored.
        tally = {k: weight_sums[k] if weight_sums[k] > 0 else 1e-9 * counts[k] for k in counts}
        order = lambda k: (tally[k], counts[k], -first_seen[k])  # noqa: E731
    else:
        tally = dict(counts)
        order = lambda k: (counts[k], weight_sums[k], -first_seen[k])  # noqa: E731
    winner = max(tally, key=order)
    members = [i for i in voters if keys[i] == winner]
    chosen = max(members, key=lambda i: (confs[i] if confs[i] is not None else -1.0, -i))
    rule = "confidence" if weighted else ("tool_vote" if kind == "tool_call" else "majority")
    return Selection(chosen, winner, tally, tuple(confs), rule)


def select_by_scorer(candidates: Sequence[Candidate], scorer: Scorer, prompt: str) -> Selection:
    """The candidate the scorer rates highest (ties to the earliest)."""
    if not candidates:
        raise TidalConfigError("select_by_scorer needs at least one candidate, got none.")
    scores = list(scorer.score(prompt, [c.text for c in candidates]))
    if len(scores) != len(candidates):
        raise TidalConfigError(
            f"scorer {type(scorer).__name__} returned {len(scores)} scores for "
            f"{len(candidates)} texts; it must return one per text."
        )
    finite = [s if isinstance(s, (int, float)) and math.isfinite(s) else -math.inf for s in scores]
    best = max(range(len(finite)), key=lambda i: (finite[i], -i))
    return Selection(best, None, {}, tuple(float(s) for s in finite), "scorer")


def select(
    candidates: Sequence[Candidate],
    selector: SelectorName,
    kind: AnswerKind = "math",
    scorer: Scorer | None = None,
    prompt: str = "",
) -> Selection:
    """Apply the named selector."""
    if selector not in SELECTORS:
        raise TidalConfigError(f"selector={selector!r}: allowed are {', '.join(SELECTORS)}.")
    if not candidates:
        raise TidalConfigError("select needs at least one candidate, got none.")
    if selector == "first":
        return Selection(0, None, {}, tuple(c.mean_logprob for c in candidates), "first")
    if selector == "majority":
        return vote(candidates, kind)
    if selector == "confidence":
        return vote(candidates, kind, weighted=True)
    if selector == "tool_vote":
        return vote(candidates, "tool_call")
    if scorer is None:
        raise TidalConfigError(
            "selector='scorer' needs a scorer (a Scorer with score(prompt, texts)); none given."
        )
    return select_by_scorer(candidates, scorer, prompt)
