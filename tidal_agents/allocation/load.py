"""Steps on their way to an engine: started, not yet submitted.

Concurrent episodes start their steps at nearly the same moment. Each step reads
the engine's load before deciding, and a step that has not submitted its request
yet is invisible to the engine: without this ledger, a burst of steps would all
see an idle engine and all choose many samples. Steps in the ledger count as
load for the others: their prompts as prefill queued ahead, one sequence each
decoding beside.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import weakref
from dataclasses import dataclass

from tidal_agents.engine.types import Engine


@dataclass(frozen=True)
class EngineLoad:
    """What a step will share the engine with."""

    #: sequences decoding (or about to) for other requests
    concurrent_sequences: int = 0
    #: other requests' prompt tokens the engine prefills before this step's
    queued_prompt_tokens: int = 0


@dataclass(frozen=True)
class _Pending:
    prompt_tokens: int
    #: a step decides and submits without yielding in between: while pending it has
    #: not decided, and will decode at least one sequence
    sequences: int = 1


class StepLedger:
    """The steps of one engine between their start and their submission. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[int, _Pending] = {}
        self._ids = itertools.count()

    def enter(self, prompt_tokens: int) -> int:
        """A step started; returns its ticket."""
        with self._lock:
            ticket = next(self._ids)
            self._pending[ticket] = _Pending(max(0, int(prompt_tokens)))
        return ticket

    def leave(self, ticket: int) -> None:
        """The step submitted its request (the engine counts it now) or ended."""
        with self._lock:
            self._pending.pop(ticket, None)

    def others(self, ticket: int | None = None) -> EngineLoad:
        """The pending steps other than `ticket`, as load."""
        with self._lock:
            rest = [p for t, p in self._pending.items() if t != ticket]
        return EngineLoad(
            concurrent_sequences=sum(p.sequences for p in rest),
            queued_prompt_tokens=sum(p.prompt_tokens for p in rest),
        )

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)


_LEDGERS: dict[int, StepLedger] = {}
_LEDGERS_LOCK = threading.Lock()


def ledger_for(engine: object) -> StepLedger:
    """The ledger of `engine` (one per engine object in this process)."""
    key = id(engine)
    with _LEDGERS_LOCK:
        # keyed by identity: engines need not be hashable
        ledger = _LEDGERS.get(key)
        if ledger is not None:
            return ledger
        ledger = _LEDGERS[key] = StepLedger()
    # the ledger goes with its engine (a reused id then starts afresh); an engine
    # that takes no weak references keeps its ledger
    with contextlib.suppress(TypeError):
        weakref.finalize(engine, _forget_ledger, key)
    return ledger


def _forget_ledger(key: int) -> None:
    with _LEDGERS_LOCK:
        _LEDGERS.pop(key, None)


def engine_load(engine: Engine, ledger: StepLedger, ticket: int | None) -> EngineLoad:
    """The engine's own counts plus the other steps still on their way to it."""
    pending = ledger.others(ticket)
    return EngineLoad(
        concurrent_sequences=max(0, engine.in_flight_sequences) + pending.concurrent_sequences,
        queued_prompt_tokens=max(0, engine.queued_prompt_tokens) + pending.queued_prompt_tokens,
    )
