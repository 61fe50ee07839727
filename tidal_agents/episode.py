"""Episodes: a wall-clock deadline (and optionally a token budget) for a whole
agent run, split into per-step allowances.

The allowance of a step is (`allowance_for`)

    usable    = max(0, remaining - safety_margin)
    k         = max(0, expected_steps - steps_done - 1)   (tool rounds still expected)
    reserve   = min(k * tool_round_s, usable / 2)
    allowance = (usable - reserve) / max(1, expected_steps - steps_done)

where ``tool_round_s`` is the predicted time of the tool calls between two steps
(`Episode.tool_round_s`; 0 while the episode has seen no tool call and the step
has no tools bound). So every step may spend its share of what is left once the
tools' predicted time is set aside, the last expected step (and any beyond) may
spend all of it, and because each step is hard-limited to its allowance (the
strategy aborts inside vLLM), the allowances of an episode never sum past
``deadline - safety_margin``: each allowance is at most what is left above the
margin, so after spending it at least the margin is still left. The reserve is
capped at half the usable time so that slow tools shrink a step's allowance but
never take it to zero while time is left.

Tool time is measured in every episode: the gap between a step's record and the
next step's start is attributed to the tools the recorded step called (a
``tool_time`` trace event) and learned per tool name (`tool_time_s`, also kept
process-wide in `allocation.tool_time.TOOL_TIMES`). Where the tools run under
`TidalEpisodeMiddleware`, each call is timed exactly (`observe_tool_time`) and
bounded by `tool_timeout_s`; the gap is then recorded but not learned from.

With ``max_episode_tokens`` the generated tokens recorded so far are a second
budget: configurations predicted to generate more than what is left do not fit,
and a step that starts with none left is treated like one past the deadline.

An episode is found by the chat model through a context variable (``with
model.episode(...)``), so threads and asyncio tasks never share one by accident.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from tidal_agents.allocation.controller import StepDecision, decide
from tidal_agents.allocation.cost_model import CostModel
from tidal_agents.allocation.features import StepFeatures
from tidal_agents.allocation.grid import default_grid
from tidal_agents.allocation.tool_time import TOOL_TIMES, ToolTimes
from tidal_agents.errors import EpisodeDeadlineExceeded, TidalConfigError
from tidal_agents.trace import JsonlWriter, Trace
from tidal_agents.trace.records import StepRecord, TraceEvent
from tidal_agents.types import StrategyConfig
from tidal_agents.validation import (
    check_bool,
    check_choice,
    check_int,
    check_number,
    is_finite_number,
)

_CURRENT: contextvars.ContextVar[Episode | None] = contextvars.ContextVar(
    "tidal_episode", default=None
)
#: reset tokens of the enclosing `with` blocks, per context: one Episode object may
#: be entered by several tasks at once, and a token only resets in its own context
_TOKENS: contextvars.ContextVar[tuple[contextvars.Token[Episode | None], ...]] = (
    contextvars.ContextVar("tidal_episode_tokens", default=())
)

#: keys accepted in RunnableConfig["configurable"]
CONFIG_KEYS = {
    "tidal_deadline_s": "deadline_s",
    "tidal_lambda_tokens": "lambda_tokens",
    "tidal_lambda_latency": "lambda_latency",
    "tidal_trace_path": "trace_path",
    "tidal_expected_steps": "expected_steps",
    "tidal_safety_margin_s": "safety_margin_s",
    "tidal_on_deadline": "on_deadline",
    "tidal_max_episode_tokens": "max_episode_tokens",
    "tidal_announce_budget": "announce_budget",
    "tidal_episode_id": "episode_id",  # also ties the steps of one episode together
}


def overrun_bound_s(deadline_s: float) -> float:
    """B for a deadline: max(0.25 s, 2% of it)."""
    return max(0.25, 0.02 * deadline_s)


class _OpenEpisodes:
    """Episodes inside a ``with episode`` block or `Episode.activate`, process-wide."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth: dict[int, int] = {}

    def enter(self, episode: Episode) -> None:
        with self._lock:
            self._depth[id(episode)] = self._depth.get(id(episode), 0) + 1

    def leave(self, episode: Episode) -> None:
        with self._lock:
            depth = self._depth.get(id(episode), 0) - 1
            if depth > 0:
                self._depth[id(episode)] = depth
            else:
                self._depth.pop(id(episode), None)

    def count(self, besides: Episode | None = None) -> int:
        with self._lock:
            return len(self._depth) - (id(besides) in self._depth)

    def __len__(self) -> int:
        return self.count()


_OPEN = _OpenEpisodes()


def open_episodes(besides: Episode | None = None) -> int:
    """How many episodes are open in this process now (inside ``with episode`` or
    `Episode.activate`), `besides` not counted. Concurrent episodes start their steps
    nearly together: each open episode is about to be, or is, decoding."""
    return _OPEN.count(besides)


def current_episode() -> Episode | None:
    """The episode active in this thread / task, if any."""
    return _CURRENT.get()


def allowance_for(
    remaining_s: float,
    steps_done: int,
    expected_steps: int,
    safety_margin_s: float,
    tool_round_s: float = 0.0,
) -> float:
    """Seconds one step may spend: an equal share, among the steps still expected
    (at least one), of the time above the safety margin less the predicted time of
    the tool rounds after this step (`tool_round_s` each, the reserve capped at half
    the usable time). Pure; 0 when nothing is left."""
    usable = remaining_s - safety_margin_s
    if not usable > 0:  # also catches NaN
        return 0.0
    rounds_after = max(0, expected_steps - steps_done - 1)
    reserve = rounds_after * tool_round_s
    reserve = min(reserve, usable / 2) if reserve > 0 else 0.0  # NaN and negatives: none
    return (usable - reserve) / max(1, expected_steps - steps_done)


OnDeadline = Literal["raise", "fallback"]


@dataclass(frozen=True)
class EpisodeSettings:
    """Everything an episode is configured with, checked by `verify` when built.

    Episodes made from one settings object (`Episode.from_settings`) share these
    values; each has its own id, start time and trace.
    """

    deadline_s: float
    """Wall-clock seconds for the whole episode, a finite number > 0."""
    lambda_tokens: float = 1e-4
    """Utility price of one token, a finite number >= 0."""
    lambda_latency: float = 0.05
    """Utility price of one second, a finite number >= 0."""
    safety_margin_s: float | None = None
    """Seconds kept back from the deadline for the agent's own work between model
    calls (tools, graph), 0 <= margin < deadline_s; None: 5% of the deadline, at
    most 1 s (see `margin_s`)."""
    expected_steps: int = 3
    """Model calls the episode is expected to need, an integer >= 1."""
    trace_path: str | Path | None = None
    """JSONL file each record is appended to (flushed per record), or None."""
    on_deadline: OnDeadline = "raise"
    """A step that starts with no time left: "raise" -> EpisodeDeadlineExceeded;
    "fallback" -> the fastest configuration runs for ``fallback_allowance_s``
    (a bounded overrun, recorded in the trace)."""
    fallback_allowance_s: float = 1.0
    """Seconds a fallback step may spend, a finite number > 0."""
    grid: Sequence[StrategyConfig] | None = None
    """Configurations to choose among (kept as a tuple); None or empty:
    allocation.default_grid()."""
    max_episode_tokens: int | None = None
    """Generated (output) tokens the whole episode may spend, an integer >= 1, or
    None for no token budget. A step starting with none left is treated like one
    past the deadline (see ``on_deadline``)."""
    announce_budget: bool = False
    """Tell the model its remaining budget: each step's conversation ends with a short
    system note (`budget_note`: seconds left, tokens left when budgeted), so it can
    choose to answer rather than call another tool. Off by default: the note changes
    the prompt the allocator and its training saw."""

    def __post_init__(self) -> None:
        self.verify()
        if self.grid is not None:
            object.__setattr__(self, "grid", tuple(self.grid) or None)

    def verify(self) -> None:
        """Raise TidalConfigError naming the first invalid setting and what is allowed."""
        check_number("deadline_s", self.deadline_s, lo=0, lo_open=True)
        check_number("lambda_tokens", self.lambda_tokens, lo=0)
        check_number("lambda_latency", self.lambda_latency, lo=0)
        margin = self.margin_s
        if not (is_finite_number(margin) and 0 <= margin < self.deadline_s):
            raise TidalConfigError(
                f"safety_margin_s={self.safety_margin_s!r}: allowed is None (the default) or "
                f"a number with 0 <= safety_margin_s < deadline_s ({self.deadline_s:g})."
            )
        check_int("expected_steps", self.expected_steps, lo=1)
        check_choice("on_deadline", self.on_deadline, get_args(OnDeadline))
        check_number("fallback_allowance_s", self.fallback_allowance_s, lo=0, lo_open=True)
        check_int("max_episode_tokens", self.max_episode_tokens, lo=1, allow_none=True)
        check_bool("announce_budget", self.announce_budget)
        if self.trace_path is not None and (
            not isinstance(self.trace_path, (str, Path)) or not str(self.trace_path)
        ):
            raise TidalConfigError(
                f"trace_path={self.trace_path!r}: allowed is None or a file path (str or Path)."
            )
        if self.grid is not None and (
            not isinstance(self.grid, (list, tuple))
            or not all(isinstance(c, StrategyConfig) for c in self.grid)
        ):
            raise TidalConfigError(
                f"grid={self.grid!r}: allowed is None or a sequence of StrategyConfig."
            )

    @property
    def margin_s(self) -> float:
        """The safety margin in seconds, the default filled in."""
        if self.safety_margin_s is None:
            return min(1.0, 0.05 * self.deadline_s)
        return self.safety_margin_s

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any]) -> EpisodeSettings:
        """Settings from keyword arguments, an unknown name a TidalConfigError."""
        unknown = sorted(set(kwargs) - _SETTING_NAMES)
        if unknown:
            raise TidalConfigError(
                f"Unknown episode setting(s) {unknown}; allowed: {sorted(_SETTING_NAMES)}."
            )
        return cls(**kwargs)

    @classmethod
    def from_config(
        cls, configurable: Mapping[str, Any], grid: Sequence[StrategyConfig] | None = None
    ) -> tuple[EpisodeSettings, str | None] | None:
        """Settings and episode id from RunnableConfig["configurable"] keys
        (``tidal_deadline_s`` ...); None when no ``tidal_*`` key is present.

        An error names the key the caller wrote as well as the setting.
        """
        ours = {k: v for k, v in configurable.items() if str(k).startswith("tidal_")}
        if not ours:
            return None
        unknown = sorted(set(ours) - set(CONFIG_KEYS))
        if unknown:
            raise TidalConfigError(
                f"Unknown configurable key(s) {unknown}; allowed: {sorted(CONFIG_KEYS)}."
            )
        if "tidal_deadline_s" not in ours:
            raise TidalConfigError(
                "configurable has tidal_* keys but no 'tidal_deadline_s'; an episode needs "
                "a deadline in seconds."
            )
        kwargs = {CONFIG_KEYS[key]: value for key, value in ours.items()}
        episode_id = kwargs.pop("episode_id", None)
        try:
            if episode_id is not None:
                episode_id = str(episode_id)
                check_episode_id(episode_id)
            return cls(grid=grid, **kwargs), episode_id
        except TidalConfigError as exc:
            keys = ", ".join(k for k, a in CONFIG_KEYS.items() if str(exc).startswith(a))
            raise TidalConfigError(
                f"configurable[{keys!r}]: {exc}" if keys else f"configurable: {exc}"
            ) from exc


_SETTING_NAMES = frozenset(f.name for f in dataclasses.fields(EpisodeSettings))


def check_episode_id(episode_id: Any) -> None:
    """TidalConfigError unless `episode_id` is None or a non-empty string."""
    if episode_id is not None and (not isinstance(episode_id, str) or not episode_id):
        raise TidalConfigError(f"episode_id={episode_id!r}: allowed is a non-empty string.")



class Episode:
    """A deadline for one agent episode, its allocation settings and its trace.

    Args:
        deadline_s: wall-clock seconds for the whole episode, > 0.
        lambda_tokens: utility price of one token.
        lambda_latency: utility price of one second.
        safety_margin_s: kept back from the deadline for the agent's own work
            between model calls (tools, graph); default 5% of the deadline, at
            most 1 s.
        expected_steps: model calls the episode is expected to need.
        trace_path: JSONL file each step record is appended to (flushed per step).
        on_deadline: "raise" -> EpisodeDeadlineExceeded when a step starts with no
            time left; "fallback" -> run the fastest configuration with
            ``fallback_allowance_s`` (a bounded overrun, recorded in the trace).
        grid: configurations to choose among (default: allocation.default_grid()).
        episode_id: the trace's name, also set by ``tidal_episode_id`` (default: random).
        max_episode_tokens: generated tokens the episode may spend (default: no limit);
            with none left a step is treated like one past the deadline.
        announce_budget: end each step's conversation with a system note of the
            budget left (see `EpisodeSettings.announce_budget`).
    """

    def __init__(
        self,
        deadline_s: float,
        lambda_tokens: float = 1e-4,
        lambda_latency: float = 0.05,
        safety_margin_s: float | None = None,
        expected_steps: int = 3,
        trace_path: str | Path | None = None,
        on_deadline: OnDeadline = "raise",
        fallback_allowance_s: float = 1.0,
        grid: Sequence[StrategyConfig] | None = None,
        clock: Callable[[], float] = time.monotonic,
        episode_id: str | None = None,
        max_episode_tokens: int | None = None,
        announce_budget: bool = False,
    ) -> None:
        check_episode_id(episode_id)
        # the settings' fields are these parameters, in this order
        settings = EpisodeSettings(deadline_s, lambda_tokens, lambda_latency, safety_margin_s,
                                   expected_steps, trace_path, on_deadline,
                                   fallback_allowance_s, grid, max_episode_tokens,
                                   announce_budget)
        self._start(settings, clock, episode_id)

    @classmethod
    def from_settings(
        cls,
        settings: EpisodeSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        episode_id: str | None = None,
    ) -> Episode:
        """A new episode with these (already checked) settings; the clock starts now."""
        check_episode_id(episode_id)
        episode = cls.__new__(cls)
        episode._start(settings, clock, episode_id)
        return episode

    def _start(
        self, settings: EpisodeSettings, clock: Callable[[], float], episode_id: str | None
    ) -> None:
        self.settings = settings
        self.deadline_s = float(settings.deadline_s)
        self.lambda_tokens = float(settings.lambda_tokens)
        self.lambda_latency = float(settings.lambda_latency)
        self.safety_margin_s = float(settings.margin_s)
        self.expected_steps = settings.expected_steps
        self.on_deadline = settings.on_deadline
        self.fallback_allowance_s = float(settings.fallback_allowance_s)
        self.grid = settings.grid
        self.max_episode_tokens = settings.max_episode_tokens
        self.announce_budget = settings.announce_budget
        self.id = episode_id or uuid.uuid4().hex[:12]
        self._clock = clock
        self.started = clock()
        self.started_wall = time.time()
        self.trace = Trace()
        self.trace.deadline_s = self.deadline_s
        self.trace.started_at = self.started_wall
        self.writer = JsonlWriter(settings.trace_path) if settings.trace_path else None
        self.finished = False
        self._lock = threading.Lock()
        self._next_step = 0
        self._steps_done = 0
        self._tokens_used = 0
        self._step_seconds: list[float] = []
        #: per-tool means: this episode's measurements over the process-wide table
        self.tool_times = ToolTimes(parent=TOOL_TIMES)
        #: tool names this episode has seen called, in first-call order
        self._tools_seen: dict[str, None] = {}
        self._round: _ToolRound | None = None

    # -------------------------------------------------------------- timing
    @property
    def deadline(self) -> float:
        """The deadline as an absolute ``time.monotonic()`` value."""
        return self.started + self.deadline_s

    @property
    def overrun_bound_s(self) -> float:
        """B: every step of this episode returns (or raises) by deadline + B, a hung
        engine included: max(0.25 s, 2% of the deadline). See docs/reliability.md."""
        return overrun_bound_s(self.deadline_s)

    def elapsed_s(self) -> float:
        return self._clock() - self.started

    def remaining_s(self) -> float:
        return self.deadline - self._clock()

    def allowance_s(self, step_index: int | None = None, *, tools_bound: bool = False) -> float:
        """Seconds a step may spend now (0 when the time is up); see `allowance_for`.

        `step_index` counts the steps before this one; by default the steps
        recorded so far (steps running concurrently have not been recorded yet,
        so they share the same, larger allowance: pass their index to split it).
        `tools_bound`: the step can call tools, so the tool rounds after it are
        reserved even before the episode has seen a tool call (`tool_round_s`).
        """
        check_int("step_index", step_index, lo=0, allow_none=True)
        with self._lock:
            done = self._steps_done if step_index is None else step_index
        return allowance_for(self.remaining_s(), done, self.expected_steps,
                             self.safety_margin_s, self.tool_round_s(tools_bound))

    def next_step_index(self) -> int:
        """The index of a step that starts now. Ends the tool round after the last
        recorded step: its time is recorded (and learned) as tool time."""
        with self._lock:
            index = self._next_step
            self._next_step += 1
            tool_round, self._round = self._round, None
        if tool_round is not None:
            self._close_round(tool_round)
        return index

    # ------------------------------------------------------------ budgets
    @property
    def tokens_used(self) -> int:
        """Generated tokens of the steps recorded so far."""
        with self._lock:
            return self._tokens_used

    def tokens_left(self) -> float | None:
        """Generated tokens left in the token budget (None: no budget; may be < 0)."""
        if self.max_episode_tokens is None:
            return None
        return float(self.max_episode_tokens - self.tokens_used)

    # ---------------------------------------------------------- tool time
    def tool_time_s(self, name: str) -> float:
        """Predicted seconds for one call of tool `name`: this episode's mean, else the
        process-wide one, else `allocation.tool_time.DEFAULT_TOOL_TIME_S`."""
        return self.tool_times.seconds(name)

    def predicted_tool_s(self, names: Iterable[str] | None = None) -> float:
        """Predicted seconds for one step's calls of `names`, summed (LangGraph may run
        one step's calls in parallel, so this is an upper estimate). Without names:
        one tool round of a step with tools bound (`tool_round_s`)."""
        if names is None:
            return self.tool_round_s(tools_bound=True)
        return sum(self.tool_time_s(name) for name in names)

    def tool_round_s(self, tools_bound: bool = False) -> float:
        """Predicted seconds of the tool calls between two steps: the mean predicted
        time of the tools this episode has seen called; before any, when tools are
        bound, the mean of the process-wide means (or the prior); else 0."""
        with self._lock:
            seen = list(self._tools_seen)
        if seen:
            return self.predicted_tool_s(seen) / len(seen)
        if not tools_bound:
            return 0.0
        process_mean = TOOL_TIMES.mean_over_known()
        return self.tool_times.prior_s if process_mean is None else process_mean

    def budget_note(self) -> str:
        """The system note `announce_budget` adds to a step: what is left of the
        deadline above the safety margin and, with a token budget, of the tokens."""
        seconds = max(0.0, self.remaining_s() - self.safety_margin_s)
        note = f"Budget: {seconds:.1f} s left of {self.deadline_s:g} s"
        tokens = self.tokens_left()
        if tokens is not None:
            note += f", {max(0, int(tokens))} tokens left"
        return (f"{note}. If that is too little for another tool call and an answer, "
                "answer now with what you have.")

    def tool_round_upper_s(self, tools_bound: bool = False) -> float:
        """Seconds that cover a slow tool round (`ToolTimes.upper_seconds`), for
        reserves that must hold: the most of the upper times of the tools this
        episode has seen called; before any, when tools are bound, the process-wide
        mean of upper times (or the prior's); else 0."""
        with self._lock:
            seen = list(self._tools_seen)
        if seen:
            return max(map(self.tool_times.upper_seconds, seen))
        if not tools_bound:
            return 0.0
        process_upper = TOOL_TIMES.upper_over_known()
        if process_upper is None:
            return self.tool_times.upper_seconds("")
        return process_upper

    def step_reserve_s(self) -> float:
        """Seconds kept for one more model step: the mean wall time of the steps
        recorded so far; before any, an equal share of the time above the margin
        among the steps still expected."""
        with self._lock:
            seconds = list(self._step_seconds)
            done = self._steps_done
        if seconds:
            return sum(seconds) / len(seconds)
        return allowance_for(self.remaining_s(), done, self.expected_steps,
                             self.safety_margin_s)

    def tool_timeout_s(self) -> float:
        """Seconds a tool call starting now may take: the time above the safety margin
        less `step_reserve_s` for the step that reads its result; 0 when none is left."""
        return max(0.0, self.remaining_s() - self.safety_margin_s - self.step_reserve_s())

    def observe_tool_time(self, name: str, seconds: float, *, timed_out: bool = False) -> None:
        """One call of tool `name` timed exactly (by whoever ran it). It is learned now
        (a timed-out call as a lower bound) and listed in the round's ``tool_time``
        event; the round's gap is then not learned from, so nothing counts twice."""
        self.tool_times.update(name, seconds, censored=timed_out)
        TOOL_TIMES.update(name, seconds, censored=timed_out)
        with self._lock:
            self._tools_seen.setdefault(name, None)
            if self._round is None:  # tools run with no recorded step before them
                self._round = _ToolRound(tools=(), ended=None, predicted_s=0.0)
            self._round.calls.append({"tool": name, "seconds": float(seconds),
                                      "timed_out": timed_out})

    def _close_round(self, tool_round: _ToolRound) -> None:
        """Record the time between a step's end and the next step's start, and learn
        it per tool unless the calls were timed exactly."""
        tools = tool_round.tools or tuple(c["tool"] for c in tool_round.calls)
        if not tools:
            return
        gap = None if tool_round.ended is None else max(0.0, self._clock() - tool_round.ended)
        measured_by = "middleware" if tool_round.calls else "gap"
        if gap is not None and not tool_round.calls:
            self._learn_gap(tools, gap)
        self.record_event(
            "tool_time", tools=list(tools), seconds=gap, predicted_s=tool_round.predicted_s,
            measured_by=measured_by, calls=list(tool_round.calls),
        )

    def _learn_gap(self, tools: tuple[str, ...], gap: float) -> None:
        """Split one round's gap over its calls in proportion to their predictions."""
        predictions = [self.tool_time_s(name) for name in tools]
        total = sum(predictions)
        for name, predicted in zip(tools, predictions, strict=True):
            share = gap * predicted / total if total > 0 else gap / len(tools)
            self.tool_times.update(name, share)
            TOOL_TIMES.update(name, share)

    # ------------------------------------------------------------ deciding
    def decide(
        self,
        features: StepFeatures,
        cost_model: CostModel,
        predictor: Any,
        grid: Sequence[StrategyConfig] | None = None,
    ) -> StepDecision:
        """The step's decision under its allowance and what is left of the token
        budget (see the module docstring)."""
        grid = tuple(grid or self.grid or default_grid())
        allowance = self.allowance_s(tools_bound=features.tools_bound > 0)
        tokens_left = self.tokens_left()
        out_of_time = allowance <= 0
        out_of_tokens = tokens_left is not None and tokens_left <= 0
        if not (out_of_time or out_of_tokens):
            return decide(features, grid, cost_model, predictor,
                          self.lambda_tokens, self.lambda_latency, allowance,
                          latency_headroom=cost_model.latency_headroom(),
                          max_tokens_left=tokens_left)
        if self.on_deadline == "raise":
            # finished: a caller that keys episodes by thread starts a fresh one next time
            self.finished = True
            if out_of_time:
                message = (
                    f"Episode {self.id}: its {self.deadline_s:g} s deadline leaves no time for "
                    f"step {features.step_index} ({self.remaining_s():.2f} s left, safety "
                    f"margin {self.safety_margin_s:.2f} s). Raise deadline_s, or pass "
                    "on_deadline='fallback' to run the fastest configuration anyway."
                )
                self.record_event("deadline_exceeded", step_index=features.step_index,
                                  remaining_s=self.remaining_s(), message=message)
            else:
                message = (
                    f"Episode {self.id}: its token budget max_episode_tokens="
                    f"{self.max_episode_tokens} is spent ({self.tokens_used} generated tokens) "
                    f"before step {features.step_index}. Raise max_episode_tokens, or pass "
                    "on_deadline='fallback' to run the cheapest configuration anyway."
                )
                self.record_event("token_budget_exceeded", step_index=features.step_index,
                                  tokens_used=self.tokens_used, message=message)
            raise EpisodeDeadlineExceeded(message)
        if out_of_time:
            # the fastest (within the token budget when some is left) for a bounded overrun
            fallback = decide(features, grid, cost_model, predictor,
                              self.lambda_tokens, self.lambda_latency, 0.0,
                              max_tokens_left=tokens_left)
            why = "deadline passed" + (" and token budget spent" if out_of_tokens else "")
            kind = "cheapest in tokens" if out_of_tokens else "fastest"
            return dataclasses.replace(
                fallback,
                reason=f"{why}: fallback to the {kind} configuration "
                       f"({fallback.config.name}) for at most {self.fallback_allowance_s:g} s",
                allowance_s=self.fallback_allowance_s,
                any_fits=False,
            )
        cheapest = decide(features, grid, cost_model, predictor,
                          self.lambda_tokens, self.lambda_latency, allowance,
                          latency_headroom=cost_model.latency_headroom(),
                          max_tokens_left=tokens_left)
        return dataclasses.replace(
            cheapest,
            reason=f"token budget spent (max_episode_tokens={self.max_episode_tokens}, "
                   f"{self.tokens_used} used): fallback to the cheapest configuration in "
                   f"tokens ({cheapest.config.name})",
        )

    def record_event(self, event: str, **detail: Any) -> TraceEvent:
        """Keep a non-step event (trace.events and the JSONL file, in order)."""
        with self._lock:
            item = TraceEvent(event=event, episode_id=self.id, at=time.time(),
                              after_step=self._steps_done, detail=detail)
            self.trace.events.append(item)
            if self.writer is not None:
                self.writer.write(item)
        return item

    def record(self, record: StepRecord, tool_calls: Sequence[str] = ()) -> None:
        """Append a step record to the trace and, if set, to the JSONL file.

        `tool_calls`: names of the tools the step called (default: the record's
        ``tool_calls``); the time until the next step starts is attributed to them.
        """
        tools = tuple(tool_calls) or tuple(record.tool_calls)
        predicted = self.predicted_tool_s(tools)
        with self._lock:  # one lock: the file and the in-memory trace keep the same order
            self._steps_done += 1
            if record.spent is not None:
                self._tokens_used += record.spent.generated_tokens
            self._step_seconds.append(max(0.0, record.ended_at - record.started_at))
            for name in tools:
                self._tools_seen.setdefault(name, None)
            self._round = _ToolRound(tools=tools, ended=self._clock(), predicted_s=predicted)
            self.trace.append(record)
            if self.writer is not None:
                self.writer.write(record)

    # ------------------------------------------------------ context manager
    @contextlib.contextmanager
    def activate(self) -> Iterator[Episode]:
        """Make this the current episode for the block without finishing it."""
        token = _CURRENT.set(self)
        _OPEN.enter(self)
        try:
            yield self
        finally:
            _OPEN.leave(self)
            _CURRENT.reset(token)

    def __enter__(self) -> Episode:
        token = _CURRENT.set(self)
        _TOKENS.set((*_TOKENS.get(), token))
        _OPEN.enter(self)
        return self

    def __exit__(self, *exc: object) -> None:
        *outer, token = _TOKENS.get()
        _TOKENS.set(tuple(outer))
        _CURRENT.reset(token)
        _OPEN.leave(self)
        self.finished = True

    async def __aenter__(self) -> Episode:
        return self.__enter__()

    async def __aexit__(self, *exc: object) -> None:
        self.__exit__(*exc)

    # --------------------------------------------------------- from config
    @classmethod
    def from_config(
        cls, configurable: Mapping[str, Any], grid: Sequence[StrategyConfig] | None = None
    ) -> Episode | None:
        """Build from RunnableConfig["configurable"] keys (``tidal_deadline_s`` ...).

        Returns None when no ``tidal_*`` key is present.
        """
        parsed = EpisodeSettings.from_config(configurable, grid)
        if parsed is None:
            return None
        settings, episode_id = parsed
        return cls.from_settings(settings, episode_id=episode_id)

    def __repr__(self) -> str:
        return (
            f"Episode(id={self.id!r}, deadline_s={self.deadline_s:g}, "
            f"remaining_s={self.remaining_s():.2f}, steps={len(self.trace)})"
        )


@dataclass
class _ToolRound:
    """The time between a step's end and the next step's start, while it runs."""

    #: tools the step called
    tools: tuple[str, ...]
    #: the episode clock when the step was recorded (None: no step before the calls)
    ended: float | None
    #: their predicted seconds, summed, when the step was recorded
    predicted_s: float
    #: calls timed exactly (`Episode.observe_tool_time`)
    calls: list[dict[str, Any]] = dataclasses.field(default_factory=list)


class EpisodeRegistry:
    """Episodes by key, the oldest dropped past `max_size`; thread-safe.

    Ties the steps of one agent run together when they reach the model on
    different threads or tasks (a LangGraph thread id, a middleware's state key).
    """

    def __init__(self, max_size: int) -> None:
        check_int("max_size", max_size, lo=1)
        self.max_size = max_size
        self._episodes: OrderedDict[str, Episode] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, episode: Episode, key: str | None = None) -> None:
        """Store `episode` under `key` (default: its id) as the newest entry."""
        with self._lock:
            self._store(episode.id if key is None else key, episode)

    def get(self, key: str | None) -> Episode | None:
        if key is None:
            return None
        with self._lock:
            return self._episodes.get(key)

    def get_or_create(self, key: str, factory: Callable[[], Episode | None]) -> Episode | None:
        """The episode under `key`; when there is none or it has finished, `factory()`'s
        (stored unless None). The factory runs under the registry's lock, so callers
        racing on one key share one new episode."""
        with self._lock:
            episode = self._episodes.get(key)
            if episode is None or episode.finished:
                episode = factory()
                if episode is not None:
                    self._store(key, episode)
            return episode

    @property
    def last(self) -> Episode | None:
        """The most recently stored episode."""
        with self._lock:
            return next(reversed(self._episodes.values()), None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._episodes)

    def _store(self, key: str, episode: Episode) -> None:
        """Caller holds the lock."""
        self._episodes[key] = episode
        self._episodes.move_to_end(key)
        while len(self._episodes) > self.max_size:
            self._episodes.popitem(last=False)


def episode_config(
    deadline_s: float,
    episode_id: str | None = None,
    *,
    lambda_tokens: float | None = None,
    lambda_latency: float | None = None,
    trace_path: str | None = None,
    expected_steps: int | None = None,
    safety_margin_s: float | None = None,
    on_deadline: OnDeadline | None = None,
    max_episode_tokens: int | None = None,
    announce_budget: bool | None = None,
) -> dict[str, Any]:
    """RunnableConfig that declares an episode for a LangGraph graph or any runnable.

    ``app.invoke(inputs, config={**episode_config(30, "user-42"), "recursion_limit": 8})``:
    every TidalChatModel step inside the run with the same `episode_id` (or the
    graph's ``thread_id``, when no id is given) shares the 30 s deadline.
    Arguments are checked now, not at the first step.
    """
    configurable: dict[str, Any] = {"tidal_deadline_s": deadline_s}
    for key, value in (
        ("tidal_episode_id", episode_id), ("tidal_lambda_tokens", lambda_tokens),
        ("tidal_lambda_latency", lambda_latency), ("tidal_trace_path", trace_path),
        ("tidal_expected_steps", expected_steps), ("tidal_safety_margin_s", safety_margin_s),
        ("tidal_on_deadline", on_deadline), ("tidal_max_episode_tokens", max_episode_tokens),
        ("tidal_announce_budget", announce_budget),
    ):
        if value is not None:
            configurable[key] = value
    EpisodeSettings.from_config(configurable)  # checks only: no episode, no file
    return {"configurable": configurable}
