"""`tidal-agents report`: README's figures table, generated from ``docs/results/*.json``.

Every row of the table is one `Row` of `ROWS`: which results file, which value in
it (a JSON path), how to print it. The table sits in README between `START` and
`END`; `report` rewrites that block and `report --check` fails when README
differs from what the results say. A row whose results file is not there yet is
left out (with a note on stderr); a row whose key is missing from an existing
file is an error, so a renamed key cannot drop a figure silently.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tidal_agents.bench.results import RESULTS_DIR
from tidal_agents.errors import TidalConfigError

START = "<!-- figures:start -->"
END = "<!-- figures:end -->"
#: a path step that maps over every entry of a mapping (deadlines, load levels)
EACH = "*"
#: blocks of a results file that `EACH` never counts as entries
_NOT_ENTRIES = frozenset({"meta", "definitions"})


@dataclass(frozen=True)
class Row:
    """One figure of the table: the value at `path` in the JSON of
    ``docs/results/<file>``, printed through `fmt`."""

    #: the command that measures it ("bench engine")
    bench: str
    #: what the figure is, in words
    label: str
    #: the results file's name under docs/results
    file: str
    #: keys from the top of the JSON down to the value; `EACH` maps over a mapping
    path: tuple[str, ...]
    #: `str.format` template for each number
    fmt: str = "{:.3g}"
    goal: str = ""
    #: `str.format` template for the keys of a mapping value (deadlines, levels)
    keys: str = "{}"


ROWS: tuple[Row, ...] = (
    Row("bench engine", "start-up", "engine.json", ("startup_s",), "{:.1f} s"),
    Row("bench engine", "decode throughput, n=1", "engine.json", ("tok_s_n1",), "{:.0f} tok/s"),
    Row("bench engine", "decode throughput, n=8", "engine.json", ("tok_s_n8",), "{:.0f} tok/s"),
    Row("bench engine", "one n=8 request / 8 *sequential* n=1 requests, wall time",
        "engine.json", ("n8_vs_8x_n1_ratio",), "{:.2f}"),
    Row("bench engine", "one n=8 request / 8 *concurrent* n=1 requests, wall time",
        "engine.json", ("n8_vs_8x_n1_concurrent_ratio",), "{:.2f}"),
    Row("bench engine --remote auto", "remote `vllm serve` / in-process wall time, n=1",
        "engine-remote.json", ("remote_vs_local_wall_ratio_n1",), "{:.2f}"),
    Row("bench engine --remote auto", "remote `vllm serve` / in-process wall time, n=8",
        "engine-remote.json", ("remote_vs_local_wall_ratio_n8",), "{:.2f}"),
    Row("bench strategies", "best-of-8 through our strategy / 8 *concurrent* bare n=1 requests",
        "strategies.json", ("bo8_vs_concurrent_ratio",), "{:.2f}", "<= 1.10"),
    Row("bench strategies", "best-of-8 / 8 *sequential* n=1 requests, s per token",
        "strategies.json", ("bo8_vs_sequential_ratio",), "{:.3f}"),
    Row("bench strategies", "wrapper overhead per short (8-token) call, ms",
        "strategies.json", ("overhead_ms_short",), "{:.1f}", "<= 10 ms"),
    Row("bench strategies", "wrapper overhead per short (8-token) call, ms, 95% interval",
        "strategies.json", ("overhead_ms_short_ci95",), "{:.1f}"),
    Row("bench strategies", "wrapper overhead per normal (64-token) call, ms",
        "strategies.json", ("overhead_ms_long",), "{:.1f}", "<= 10 ms"),
    Row("bench strategies", "wrapper overhead per normal (64-token) call, ms, 95% interval",
        "strategies.json", ("overhead_ms_long_ci95",), "{:.1f}"),
    Row("bench strategies", "step-level beam vs vLLM's beam algorithm (same width and token "
        "limit): accuracy", "strategies.json", ("beam_vs_vllm_beam", EACH, "accuracy"),
        "{:.3f}"),
    Row("bench strategies", "step-level beam vs vLLM's beam algorithm: generated tokens per "
        "question", "strategies.json", ("beam_vs_vllm_beam", EACH, "mean_generated_tokens"),
        "{:.0f}"),
    Row("bench strategies", "step-level beam vs vLLM's beam algorithm: wall seconds per "
        "question", "strategies.json", ("beam_vs_vllm_beam", EACH, "mean_wall_s"), "{:.2f}"),
    Row("bench strategies", "accuracy on graded arithmetic", "strategies.json",
        ("accuracy",), "{:.3f}"),
    Row("bench episodes", "success (a usable reply by the deadline stating the gold "
        "number), pooled over the deadline mix", "episodes.json",
        ("pooled_figures", EACH, "success_rate"), "{:.2f}", "adaptive >= best static"),
    Row("bench episodes", "output tokens per episode, pooled over the deadline mix",
        "episodes.json", ("pooled", EACH, "tokens"), "{:.0f}", "adaptive <= best static"),
    Row("bench episodes", "best static policy meeting the deadline (pooled)", "episodes.json",
        ("pooled_adaptive_vs_best_static", "best_static")),
    Row("bench episodes", "adaptive - best static success, paired over tasks", "episodes.json",
        ("pooled_adaptive_vs_best_static", "success_difference"), "{:+.3f}"),
    Row("bench episodes", "returned by the deadline with a usable reply", "episodes.json",
        ("usable_within_deadline_rate",), "{:.2f}", ">= 0.99"),
    Row("bench episodes", "returned by the deadline with no usable reply", "episodes.json",
        ("no_usable_reply_rate",), "{:.2f}"),
    Row("bench episodes", "raised an error", "episodes.json", ("error_rate",), "{:.2f}"),
    Row("bench episodes", "returned after the deadline", "episodes.json",
        ("over_deadline_rate",), "{:.2f}"),
    Row("bench episodes", "steps cut short", "episodes.json", ("cut_short_step_rate",),
        "{:.2f}"),
    Row("bench episodes", "latency prediction, median abs. relative error, all steps",
        "episodes.json", ("latency_pred_median_abs_rel_error",), "{:.2f}", "<= 0.20"),
    Row("bench episodes", "latency prediction, median abs. relative error, first steps",
        "episodes.json", ("latency_pred_first_step", "median_abs_rel_error"), "{:.2f}"),
    Row("bench episodes", "seed 4: success, pooled over the deadline mix",
        "episodes-seed4.summary.json", ("pooled", EACH, "success"), "{:.2f}",
        "adaptive >= best static - 0.02"),
    Row("bench episodes", "seed 4: output tokens per episode, pooled",
        "episodes-seed4.summary.json", ("pooled", EACH, "tokens"), "{:.0f}",
        "adaptive <= best static"),
    Row("bench episodes", "seed 4: adaptive - best static success, paired over tasks",
        "episodes-seed4.summary.json", ("pooled_adaptive_vs_best_static",
                                        "success_difference"), "{:+.3f}"),
    *(row for seed in (0, 1) for row in (
        Row("bench episodes", f"seed {seed}, before the four-way outcomes: adaptive, success "
            "rate", f"episodes-seed{seed}.summary.json", ("success_rate", "adaptive"), "{:.2f}",
            ">= best static", keys="{} s"),
        Row("bench episodes", f"seed {seed}, before the four-way outcomes: best static "
            "meeting the deadline, success rate", f"episodes-seed{seed}.summary.json",
            ("best_static_meeting_deadline", EACH, "success_rate"), "{:.2f}", keys="{} s"),
    )),
    Row("bench load", "returned by the deadline with a usable reply, per concurrent episodes",
        "load.json", (EACH, "usable_within_deadline_rate"), "{:.2f}", ">= 0.99"),
    Row("bench load", "steps cut short, per concurrent episodes", "load.json",
        (EACH, "cut_short_step_rate"), "{:.2f}"),
    Row("bench load", "p50 step, per concurrent episodes", "load.json",
        (EACH, "p50_step_s"), "{:.1f} s"),
    Row("bench load", "p99 step, per concurrent episodes", "load.json",
        (EACH, "p99_step_s"), "{:.1f} s"),
    Row("bench load", "samples per step, per concurrent episodes", "load.json",
        (EACH, "mean_samples_per_step"), "{:.1f}"),
    Row("bench invoke", "held-out steps through `TidalChatModel.invoke`: accuracy per policy",
        "invoke.json", ("per_policy", EACH, "accuracy"), "{:.3f}"),
    Row("bench invoke", "held-out steps: output tokens per step, per policy", "invoke.json",
        ("per_policy", EACH, "mean_output_tokens"), "{:.0f}"),
    Row("bench invoke", "held-out steps: best static policy", "invoke.json", ("best_static",)),
    Row("bench invoke", "held-out steps: adaptive - best static accuracy, paired over steps",
        "invoke.json", ("adaptive_minus_best_static", "difference"), "{:+.3f}", ">= -0.02"),
    Row("bench invoke", "held-out steps: adaptive - best static, 95% interval", "invoke.json",
        ("adaptive_minus_best_static", "ci95"), "{:+.3f}"),
    Row("bench invoke", "held-out steps: adaptive output tokens / best static's", "invoke.json",
        ("adaptive_token_share_of_best_static",), "{:.2f}", "<= 0.60"),
    Row("bench allocation", "cross-validated: static best, accuracy", "allocation.json",
        ("cross_validated", "static_best", "accuracy"), "{:.3f}"),
    Row("bench allocation", "cross-validated: static best, accuracy, 95% interval",
        "allocation.json", ("cross_validated", "static_best", "accuracy_ci95"), "{:.3f}"),
    Row("bench allocation", "cross-validated: adaptive (cheapest within 0.01 of static best "
        "in training folds), accuracy", "allocation.json",
        ("cross_validated", "adaptive", "accuracy"), "{:.3f}", ">= static best - 0.01"),
    Row("bench allocation", "cross-validated: adaptive, accuracy, 95% interval",
        "allocation.json", ("cross_validated", "adaptive", "accuracy_ci95"), "{:.3f}"),
    Row("bench allocation", "cross-validated: adaptive - static best (paired)",
        "allocation.json", ("cross_validated", "adaptive_minus_static_best", "difference"),
        "{:+.3f}", ">= -0.01"),
    Row("bench allocation", "cross-validated: adaptive - static best, 95% interval",
        "allocation.json", ("cross_validated", "adaptive_minus_static_best", "ci95"),
        "{:+.3f}"),
    Row("bench allocation", "cross-validated: output tokens saved at matched accuracy",
        "allocation.json", ("cross_validated", "tokens_saved_at_matched_accuracy"), "{:.2f}",
        ">= 0.4"),
    Row("bench allocation", "cross-validated: output tokens saved, 95% interval",
        "allocation.json", ("cross_validated", "tokens_saved_ci95"), "{:.2f}"),
    Row("bench allocation", "cross-validated: latency saved at matched accuracy",
        "allocation.json", ("cross_validated", "latency_saved_at_matched_accuracy"), "{:.2f}"),
    Row("bench allocation", "cross-validated: latency saved, 95% interval",
        "allocation.json", ("cross_validated", "latency_saved_ci95"), "{:.2f}"),
    Row("bench allocation", "cross-validated: gap to the expected-accuracy oracle closed",
        "allocation.json", ("cross_validated", "gap_closed_expected_oracle"), "{:.2f}",
        ">= 0.25"),
    Row("bench allocation", "cross-validated: gap closed, 95% interval", "allocation.json",
        ("cross_validated", "gap_closed_expected_oracle_ci95"), "{:.2f}"),
    Row("bench allocation", "cross-validated: oracle, accuracy", "allocation.json",
        ("cross_validated", "oracle", "accuracy"), "{:.3f}"),
    Row("bench allocation", "cross-validated, the chat model's default lambdas: adaptive - "
        "static best (paired)", "allocation.json",
        ("cross_validated", "adaptive_at_shipped_defaults", "adaptive_minus_static_best"),
        "{:+.3f}"),
    Row("bench allocation", "cross-validated, the chat model's default lambdas: output tokens "
        "saved", "allocation.json",
        ("cross_validated", "adaptive_at_shipped_defaults", "tokens_saved"), "{:.2f}"),
)


class ReportError(TidalConfigError):
    """README or a results file does not fit the report (markers, keys)."""


_MISSING = object()


def _lookup(data: Any, path: Sequence[str], where: str) -> Any:
    """The value at `path`; `EACH` maps over a mapping's entries that are mappings or None."""
    if not path:
        return data
    step, rest = path[0], path[1:]
    if step == EACH:
        if not isinstance(data, Mapping):
            raise ReportError(f"{where}: '{EACH}' needs a mapping, found {type(data).__name__}")
        picked = {
            key: None if value is None else _lookup(value, rest, where)
            for key, value in data.items()
            if key not in _NOT_ENTRIES
            and (value is None or (isinstance(value, Mapping) and (not rest or rest[0] in value)))
        }
        if not picked:
            raise ReportError(f"{where}: no entry holds {list(rest)}")
        return picked
    value = data.get(step, _MISSING) if isinstance(data, Mapping) else _MISSING
    if value is _MISSING:
        raise ReportError(f"{where}: key {step!r} not found; update ROWS in {__name__}")
    return _lookup(value, rest, where)


def format_value(value: Any, fmt: str, keys: str = "{}") -> str:
    """A figure as table text: numbers through `fmt`, mappings as ``key: value`` lists."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):  # counts (episodes, pairs) print whole
        return str(value)
    if isinstance(value, float):
        return fmt.format(value)
    if isinstance(value, Mapping):
        return ", ".join(f"{keys.format(k)}: {format_value(v, fmt, keys)}"
                         for k, v in value.items())
    if isinstance(value, list | tuple):  # an interval
        return "[" + ", ".join(format_value(v, fmt, keys) for v in value) + "]"
    return str(value)


def _source(file: str, meta: Mapping[str, Any] | None) -> str:
    """`file`, and the commit and date it was measured at (``*``: with uncommitted changes)."""
    if not meta:
        return f"`{file}`"
    sha = str(meta.get("git_sha") or "")[:7] or "no git"
    dirty = "*" if meta.get("git_dirty") else ""
    date = str(meta.get("date_utc") or "")[:10]
    return f"`{file}` {sha}{dirty}" + (f", {date}" if date else "")


def _machine(meta: Mapping[str, Any]) -> str:
    m = meta.get("machine") or {}
    parts = [m.get("cpu"), f"{m.get('usable_cores')} cores" if m.get("usable_cores") else None,
             f"{m.get('memory_gib')} GiB" if m.get("memory_gib") else None,
             ", ".join(m.get("gpus") or []) or None, m.get("vllm"), m.get("torch")]
    return ", ".join(str(x) for x in parts if x)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_table(
    results_dir: Path, rows: Sequence[Row] = ROWS, note: Callable[[str], None] | None = None
) -> str:
    """The markdown table of `rows` whose results file exists under `results_dir`, then
    the machine each of those files was measured on."""
    loaded: dict[str, Any] = {}
    lines = ["| benchmark | figure | value | goal | results file, commit, date |",
             "|---|---|---|---|---|"]
    for row in rows:
        if row.file not in loaded:
            path = results_dir / row.file
            loaded[row.file] = (json.loads(path.read_text(encoding="utf-8"))
                                if path.exists() else None)
            if loaded[row.file] is None and note is not None:
                note(f"report: {path.as_posix()} not there yet; its figures are left out")
        data = loaded[row.file]
        if data is None:
            continue
        value = _lookup(data, row.path, f"{row.file} {'/'.join(row.path)} ({row.label})")
        lines.append("| " + " | ".join(_cell(c) for c in (
            f"`{row.bench}`", row.label, format_value(value, row.fmt, row.keys), row.goal,
            _source(row.file, data.get("meta")),
        )) + " |")
    metas = {f: d["meta"] for f, d in loaded.items() if d is not None and d.get("meta")}
    lines.append("")
    if any(m.get("git_dirty") for m in metas.values()):
        lines.append("\\* measured with uncommitted changes in the tree.")
        lines.append("")
    lines.extend(f"- `{f}`: {_machine(m)}" for f, m in metas.items())
    return "\n".join(lines).rstrip("\n") + "\n"


def generated_block(table: str) -> str:
    """The README block: markers, a line saying where the table comes from, the table."""
    return (f"{START}\n"
            f"Generated by `tidal-agents report` from `{RESULTS_DIR.as_posix()}/*.json` "
            "(do not edit by hand; each file's `meta` names the machine and arguments).\n\n"
            f"{table}{END}")


def replace_block(readme_text: str, block: str) -> str:
    """`readme_text` with the text between the markers (markers included) replaced."""
    start, end = readme_text.find(START), readme_text.find(END)
    if start < 0 or end < start or readme_text.count(START) != 1 or readme_text.count(END) != 1:
        raise ReportError(f"README must hold exactly one {START} ... {END} block, in that order")
    return readme_text[:start] + block + readme_text[end + len(END):]


def current_block(readme_text: str) -> str:
    """README's block as it stands (markers included)."""
    start, end = readme_text.find(START), readme_text.find(END)
    if start < 0 or end < start:
        raise ReportError(f"README holds no {START} ... {END} block")
    return readme_text[start:end + len(END)]


def run_report(readme: Path, results_dir: Path, check: bool = False,
               note: Callable[[str], None] | None = None) -> int:
    """Rewrite README's figures block (or, with `check`, return 1 if it differs)."""
    if not readme.is_file():
        raise ReportError(f"--readme {readme}: no such file")
    if not results_dir.is_dir():
        raise ReportError(f"--results-dir {results_dir}: no such folder")
    say = note or (lambda text: print(text, file=sys.stderr))
    text = readme.read_text(encoding="utf-8")
    updated = replace_block(text, generated_block(render_table(results_dir, note=say)))
    if check:
        if updated != text:
            say(f"report: {readme} differs from docs/results; run `tidal-agents report`")
            return 1
        return 0
    if updated != text:
        readme.write_text(updated, encoding="utf-8")
        say(f"report: {readme} updated")
    return 0
