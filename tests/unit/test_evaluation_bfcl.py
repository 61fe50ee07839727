"""BFCL multi-turn wiring: data, schema conversion, back ends and the official checker."""

from __future__ import annotations

import ast

import jsonschema
import pytest

from tidal_agents.errors import TidalConfigError
from tidal_agents.evaluation import bfcl


def test_load_entries_and_tools_are_valid_json_schema() -> None:
    entries = bfcl.load_entries("multi_turn_base", limit=5)
    assert len(entries) == 5 and entries[0].id == "multi_turn_base_0"
    for e in entries:
        assert len(e.turns) == len(e.ground_truth)
        names = [t["function"]["name"] for t in e.tools]
        assert len(names) == len(set(names))
        assert not set(e.raw.get("excluded_function", [])) & set(names)
        for t in e.tools:
            jsonschema.Draft202012Validator.check_schema(t["function"]["parameters"])
            assert "dict" not in str(t["function"]["parameters"].get("type"))
    with pytest.raises(TidalConfigError, match="category"):
        bfcl.load_entries("simple")


def test_to_json_schema_types() -> None:
    s = bfcl.to_json_schema({"type": "dict", "properties": {
        "x": {"type": "float"}, "t": {"type": "tuple", "items": {"type": "any"}}}})
    assert s == {"type": "object", "properties": {"x": {"type": "number"},
                                                  "t": {"type": "array", "items": {}}}}


def test_call_string_round_trips_through_python_syntax() -> None:
    s = bfcl.call_string("mv", {"source": "a'b.txt", "destination": "temp", "n": 2})
    call = ast.parse(s, mode="eval").body
    assert isinstance(call, ast.Call) and call.func.id == "mv"  # type: ignore[attr-defined]
    assert {k.arg: ast.literal_eval(k.value) for k in call.keywords} == {
        "source": "a'b.txt", "destination": "temp", "n": 2}
    with pytest.raises(TidalConfigError):
        bfcl.call_string("os.system", {})


def test_ground_truth_replay_passes_official_checker_and_wrong_calls_fail() -> None:
    (entry,) = bfcl.load_entries("multi_turn_base", limit=1)
    gold = [[list(turn)] for turn in entry.ground_truth]
    assert bfcl.check(entry, gold, "replay_gold")["valid"] is True
    empty: list[list[list[str]]] = [[] for _ in entry.ground_truth]
    assert bfcl.check(entry, empty, "replay_empty")["valid"] is False
    assert bfcl.check(entry, gold[:-1], "replay_short")["valid"] is False


def test_execute_runs_on_simulated_back_end() -> None:
    (entry,) = bfcl.load_entries("multi_turn_base", limit=1)
    out = bfcl.execute(["cd(folder='document')", "ls()"], entry, "exec_test")
    assert "final_report.pdf" in out[1]
