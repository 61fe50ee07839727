"""Types shared by every layer: strategy configurations, candidates and costs.

This module sits below the engine, strategies, selection and allocation, so any
of them can name these types without importing a layer above it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Literal, get_args

from tidal_agents.errors import TidalConfigError
from tidal_agents.validation import check_bool, check_choice, check_int, check_number

StrategyName = Literal["single", "best_of_n", "beam", "vllm_beam"]
SelectorName = Literal["first", "majority", "confidence", "tool_vote", "scorer"]
#: how final answers are extracted and compared when voting
AnswerKind = Literal["text", "math", "tool_call"]
STRATEGY_NAMES: tuple[str, ...] = get_args(StrategyName)
SELECTOR_NAMES: tuple[str, ...] = get_args(SelectorName)


@dataclass(frozen=True)
class StrategyConfig:
    """One point of the allocation grid: a strategy and its budget.

    Attributes:
        strategy: which decoding strategy.
        n: samples for best_of_n, beam width for beam / vllm_beam, 1 for single.
        selector: how best_of_n picks among samples.
        max_tokens: new tokens per sample (per beam for beam search).
        temperature: sampling temperature; single with n=1 and 0.0 is greedy.
        adaptive: best_of_n only: sample in waves (2, 4, ...) up to n, stop
            early once the leading answer's agreement is decisive.
        expansions: beam only: samples drawn per live beam each round.
    """

    strategy: StrategyName
    n: int = 1
    selector: SelectorName = "first"
    max_tokens: int = 256
    temperature: float = 0.7
    adaptive: bool = False
    expansions: int = 2

    def __post_init__(self) -> None:
        self.verify()

    def verify(self) -> None:
        """Raise TidalConfigError naming the first invalid field and its allowed values."""
        check_choice("strategy", self.strategy, STRATEGY_NAMES)
        check_int("n", self.n, lo=1)
        if self.strategy == "single" and self.n != 1:
            raise TidalConfigError(
                f"n={self.n!r}: allowed is 1 with strategy 'single'; use best_of_n for more "
                "samples."
            )
        check_choice("selector", self.selector, SELECTOR_NAMES)
        check_int("max_tokens", self.max_tokens, lo=1)
        check_number("temperature", self.temperature, lo=0)
        check_bool("adaptive", self.adaptive)
        check_int("expansions", self.expansions, lo=1)

    @property
    def name(self) -> str:
        """Short stable label, e.g. 'single', 'bo8-majority', 'beam4'."""
        if self.strategy == "single":
            return "single" if self.temperature > 0 else "greedy"
        if self.strategy == "best_of_n":
            return f"bo{self.n}-{self.selector}" + ("-adaptive" if self.adaptive else "")
        return f"{self.strategy}{self.n}"


@dataclass(frozen=True)
class Candidate:
    """One complete (or cut-short) output the strategy considered."""

    text: str
    token_ids: tuple[int, ...]
    finish_reason: str
    #: the extracted final answer used for voting (None if none could be found)
    answer: str | None = None
    #: selector / beam score; higher is better
    score: float | None = None
    mean_logprob: float | None = None
    #: log-prob of each generated token (empty when log-probs were not requested)
    token_logprobs: tuple[float, ...] = ()


@dataclass(frozen=True)
class CostRecord:
    """What one strategy run really spent. Token counts equal the engine's."""

    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    #: every generated token, pruned beams and discarded samples included
    generated_tokens: int = 0
    engine_calls: int = 0
    wall_s: float = 0.0
    cut_short: bool = False
    #: remote fleets: the replicas that answered, and requests retried after a failure
    servers: tuple[str, ...] = ()
    engine_retries: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.generated_tokens

    def merged(self, other: CostRecord) -> CostRecord:
        """What both runs spent together: counts and seconds add up, cut short if
        either was, servers in the order they first answered."""
        values: dict[str, Any] = {}
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if isinstance(mine, bool):
                values[f.name] = mine or theirs
            elif isinstance(mine, tuple):
                values[f.name] = tuple(dict.fromkeys(mine + theirs))
            else:
                values[f.name] = mine + theirs
        return CostRecord(**values)


@dataclass(frozen=True)
class StrategyResult:
    selected: Candidate
    candidates: tuple[Candidate, ...]
    cost: CostRecord
    config: StrategyConfig
    #: votes, confidence scores, beam scores, waves: whatever explains the choice
    details: dict[str, Any] = field(default_factory=dict)
