"""Per-engine step ledgers (pure logic, no engine)."""

from __future__ import annotations

import gc

from tidal_agents.allocation import load
from tidal_agents.allocation.load import ledger_for


class _Engine:
    """Any object stands in: ledgers are keyed by identity."""


def test_one_ledger_per_engine_and_it_goes_with_the_engine() -> None:
    engine, other = _Engine(), _Engine()
    ledger = ledger_for(engine)
    assert ledger_for(engine) is ledger
    assert ledger_for(other) is not ledger
    key = id(engine)
    assert key in load._LEDGERS
    del engine
    gc.collect()
    assert key not in load._LEDGERS


def test_an_engine_without_weak_references_still_gets_a_ledger() -> None:
    class Slotted:
        __slots__ = ()

    engine = Slotted()
    assert ledger_for(engine) is ledger_for(engine)
    load._forget_ledger(id(engine))
