"""README's figures table against docs/results, and the report generator and results writer."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from tidal_agents.bench.report import (
    EACH,
    END,
    ROWS,
    START,
    ReportError,
    Row,
    current_block,
    format_value,
    generated_block,
    render_table,
    replace_block,
    run_report,
)
from tidal_agents.bench.results import (
    command_arguments,
    default_results_path,
    git_state,
    results_document,
    save_results,
)

REPO = Path(__file__).resolve().parents[2]


def test_readme_figures_are_the_committed_results() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    expected = generated_block(render_table(REPO / "docs" / "results"))
    assert current_block(readme) == expected, (
        "README's figures differ from docs/results: run `tidal-agents report`"
    )


def test_every_row_names_a_results_json() -> None:
    assert all(r.file.endswith(".json") and r.path and r.bench.startswith("bench ")
               for r in ROWS)
    assert len({(r.file, r.label) for r in ROWS}) == len(ROWS)


def _write(folder: Path, name: str, data: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(data))


META = {"git_sha": "0123456789abcdef", "git_dirty": False, "date_utc": "2026-01-02T03:04:05Z",
        "machine": {"cpu": "Test CPU", "usable_cores": 4, "memory_gib": 8.0, "vllm": "vllm 1"}}
ROWS_T = (
    Row("bench a", "ratio", "a.json", ("ratio",), "{:.2f}", "<= 1"),
    Row("bench a", "per level", "a.json", (EACH, "p99"), "{:.1f} s", keys="{} eps"),
    Row("bench b", "missing file", "b.json", ("x",)),
)


def test_table_from_results_and_notes_for_missing_files(tmp_path: Path) -> None:
    _write(tmp_path, "a.json", {"meta": META, "ratio": 1.234, "max_tokens": 64,
                                "definitions": {"p99": "what p99 means"},
                                "1": {"p99": 2.0}, "10": {"p99": 16.04}})
    notes: list[str] = []
    table = render_table(tmp_path, ROWS_T, note=notes.append)
    lines = table.splitlines()
    assert lines[2] == "| `bench a` | ratio | 1.23 | <= 1 | `a.json` 0123456, 2026-01-02 |"
    # EACH maps over the entries that hold the key (not meta, definitions, max_tokens)
    assert lines[3].split(" | ")[2] == "1 eps: 2.0 s, 10 eps: 16.0 s"
    assert "missing file" not in table and len(notes) == 1 and "b.json" in notes[0]
    assert "- `a.json`: Test CPU, 4 cores, 8.0 GiB, vllm 1" in lines
    assert "uncommitted" not in table


def test_uncommitted_changes_are_marked(tmp_path: Path) -> None:
    _write(tmp_path, "a.json", {"meta": {**META, "git_dirty": True}, "ratio": 1.0})
    table = render_table(tmp_path, ROWS_T[:1])
    assert "`a.json` 0123456*, 2026-01-02" in table
    assert "uncommitted changes" in table


def test_a_missing_key_is_an_error_not_a_silent_gap(tmp_path: Path) -> None:
    _write(tmp_path, "a.json", {"ratio_renamed": 1.0})
    with pytest.raises(ReportError, match="'ratio' not found"):
        render_table(tmp_path, ROWS_T[:1])
    _write(tmp_path, "a.json", {"ratio": 1.0, "1": {"p50": 1.0}})
    with pytest.raises(ReportError, match="no entry holds"):
        render_table(tmp_path, ROWS_T[:2])


@pytest.mark.parametrize("value, text", [
    (None, "n/a"), (True, "yes"), (7, "7"), (0.12345, "0.12"), ("bo8", "bo8"),
    ([-0.1, 0.25], "[-0.10, 0.25]"), ({"2.5": 0.5, "4": None}, "2.5: 0.50, 4: n/a"),
    ({"difference": 0.1, "ci95": [0.0, 0.2], "pairs": 96},
     "difference: 0.10, ci95: [0.00, 0.20], pairs: 96"),
])
def test_format_value(value: Any, text: str) -> None:
    assert format_value(value, "{:.2f}") == text


def test_report_rewrites_only_the_block_and_check_fails_until_then(tmp_path: Path) -> None:
    results = tmp_path / "results"
    _write(results, "a.json", {"meta": META, "ratio": 0.5, "1": {"p99": 1.0}})
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\nbefore\n\n{START}\nold table\n{END}\n\nafter\n")
    notes: list[str] = []
    assert run_report(readme, results, check=True, note=notes.append) == 1
    assert "old table" in readme.read_text()  # --check changes nothing
    assert run_report(readme, results, note=notes.append) == 0
    text = readme.read_text()
    assert text.startswith("# title\n\nbefore\n\n") and text.endswith(f"{END}\n\nafter\n")
    assert "| `bench a` | ratio | 0.5 |" not in text  # ROWS, not ROWS_T: a.json is no row file
    assert run_report(readme, results, check=True, note=notes.append) == 0
    _write(results, "allocation.json", {"cross_validated": {}})
    with pytest.raises(ReportError, match="allocation.json"):
        run_report(readme, results, check=True, note=notes.append)


def test_markers_must_be_there_once_and_in_order() -> None:
    for text in ("no markers", f"{END}\n{START}", f"{START}{END}{START}{END}"):
        with pytest.raises(ReportError):
            replace_block(text, generated_block(""))
    assert replace_block(f"a{START}x{END}b", "NEW") == "aNEWb"


def test_report_checks_its_paths(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="--readme"):
        run_report(tmp_path / "README.md", tmp_path)
    (tmp_path / "README.md").write_text("x")
    with pytest.raises(ReportError, match="--results-dir"):
        run_report(tmp_path / "README.md", tmp_path / "none")


def test_results_document_keeps_the_bench_keys_and_adds_meta(tmp_path: Path) -> None:
    args = argparse.Namespace(func=print, json=True, out=None, no_save=False, verbose=False,
                              bench="load", quick=True, outcomes=[tmp_path / "o.jsonl"],
                              plot_dir=tmp_path)
    figures = {"b": 1, "a": {"x": 2.0}, "definitions": {"a": "what a means"}}
    doc = results_document("load", figures, args, wall_s=1.23456)
    assert list(doc) == ["meta", "b", "a", "definitions"]
    assert doc["meta"]["arguments"] == {"outcomes": [str(tmp_path / "o.jsonl")],
                                        "plot_dir": str(tmp_path), "quick": True}
    assert doc["meta"]["wall_s"] == 1.235 and doc["meta"]["bench"] == "load"
    assert doc["meta"]["date_utc"].endswith("Z")


def test_save_results_where(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert default_results_path("x") is None
    assert save_results("x", {"v": 1}, {}, 0.0)[1] is None
    (tmp_path / "docs" / "results").mkdir(parents=True)
    doc, path = save_results("x", {"v": 1}, {}, 0.0)
    assert path == tmp_path / "docs" / "results" / "x.json"
    assert json.loads(path.read_text()) == doc
    out = tmp_path / "other" / "y.json"
    assert save_results("x", {"v": 1}, {}, 0.0, out=out)[1] == out and out.exists()


def test_git_state_outside_a_repository(tmp_path: Path) -> None:
    assert git_state(tmp_path) == {"git_sha": None, "git_dirty": None}
    state = git_state()  # this checkout
    assert state["git_sha"] is None or len(state["git_sha"]) == 40


def test_command_arguments_leave_out_dispatch_options() -> None:
    args = argparse.Namespace(func=print, command="bench", bench="engine", json=True,
                              verbose=True, out=None, no_save=False, max_tokens=64)
    assert command_arguments(args) == {"max_tokens": 64}
