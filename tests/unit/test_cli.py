"""`tidal-agents`: every sub-command's own --help, option defaults, quiet logs, bench results.

All in-process through `cli.main`, without the engine.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import re
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tidal_agents import cli

#: options every sub-command has
SHARED = {"--help", "--verbose"}
#: options every bench has besides its module's own (`--model`: benches that start the engine)
BENCH_SHARED = {"--json", "--out", "--no-save"}
#: sub-commands whose options cli.py defines itself
OWN_OPTIONS: dict[tuple[str, ...], set[str]] = {
    (): set(),
    ("demo",): {"--deadline", "--trace-dir"},
    ("model",): {"--force"},
    ("calibrate",): {"--model", "--quick", "--engine-url", "--out"},
    ("bench",): set(),
    ("report",): {"--check", "--readme", "--results-dir"},
    ("serve",): {"--host", "--port", "--allow-remote", "--api-key", "--model", "--engine-url",
                 "--max-tokens-limit", "--max-request-bytes", "--served-model-name"},
    ("vllm-serve",): {"--count", "--model"},
}
#: sub-commands whose options their module defines (`add_arguments`)
MODULE_OPTIONS: dict[tuple[str, ...], str] = {
    ("collect",): "tidal_agents.evaluation.collect",
    ("train",): "tidal_agents.evaluation.train",
    **{("bench", name): f"tidal_agents.bench.{name}" for name in cli.BENCHES},
}


def help_text(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_:
        cli.main([*argv, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


def listed_options(text: str) -> set[str]:
    """Long options in the help's options section (not those its description mentions)."""
    section = text.split("\noptions:\n", 1)[1]
    return set(re.findall(r"(?:^|[\s,])(--[a-z][a-z0-9-]*)", section))


def module_options(module_name: str) -> set[str]:
    parser = argparse.ArgumentParser(add_help=False)
    importlib.import_module(module_name).add_arguments(parser)
    return {s for action in parser._actions for s in action.option_strings if s.startswith("--")}


@pytest.mark.parametrize("argv", list(OWN_OPTIONS), ids=lambda a: " ".join(a) or "top")
def test_help_of_commands_defined_in_cli(
    argv: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    assert listed_options(help_text(list(argv), capsys)) == SHARED | OWN_OPTIONS[argv]


@pytest.mark.parametrize("argv", list(MODULE_OPTIONS), ids=" ".join)
def test_help_of_commands_defined_in_their_module(
    argv: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    expected = SHARED | module_options(MODULE_OPTIONS[argv])
    if argv[0] == "bench":
        expected |= BENCH_SHARED | ({"--model"} if argv[1] != "allocation" else set())
    assert listed_options(help_text(list(argv), capsys)) == expected


def test_each_bench_lists_only_its_own_options(capsys: pytest.CaptureFixture[str]) -> None:
    texts = {name: listed_options(help_text(["bench", name], capsys)) for name in cli.BENCHES}
    assert "--remote" in texts["engine"] and "--deadlines" in texts["episodes"]
    assert all("--remote" not in t for n, t in texts.items() if n != "engine")
    assert all("--deadlines" not in t for n, t in texts.items() if n != "episodes")
    assert "--model" not in texts["allocation"]  # it runs without the engine


def test_top_level_help_loads_no_bench_or_evaluation_module() -> None:
    code = ("import sys; from tidal_agents import cli\n"
            "try: cli.main(['bench', '--help'])\n"
            "except SystemExit: pass\n"
            "print(sorted(m for m in sys.modules if m.startswith(('tidal_agents.evaluation', "
            "'tidal_agents.bench.engine', 'tidal_agents.bench.episodes', 'vllm', 'torch'))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_option_defaults_are_the_modules() -> None:
    parser = cli.build_parser()
    episodes = parser.parse_args(["bench", "episodes"])
    assert (episodes.max_tokens, episodes.quick, episodes.deadlines, episodes.tasks,
            episodes.kinds, episodes.seed, episodes.episodes_out) == (64, False, None, None,
                                                                       None, 0, None)
    load = parser.parse_args(["bench", "load", "--deadline", "30"])
    assert (load.max_tokens, load.deadline, load.quick) == (64, 30.0, False)
    engine = parser.parse_args(["bench", "engine"])
    assert (engine.max_tokens, engine.remote, engine.model, engine.json) == (64, None, None, False)
    collect = parser.parse_args(["collect", "--out", "o.jsonl"])
    assert (collect.task, collect.n_max, collect.max_tokens, collect.concurrency,
            collect.latency_items, collect.no_beam, collect.tasks) == (None, 16, 64, 4, 3, False,
                                                                   None)
    train = parser.parse_args(["train"])
    assert (train.estimator, train.test_fraction, train.seed) == ("select", 0.3, 0)
    assert train.func is not collect.func  # each runs its own module


def test_collect_still_requires_out(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["collect"])
    assert exit_.value.code == 2
    assert "--out" in capsys.readouterr().err


@pytest.mark.parametrize("argv, verbose", [
    (["demo"], False), (["--verbose", "demo"], True), (["demo", "--verbose"], True),
    (["bench", "load", "-v"], True), (["-v", "bench", "allocation"], True),
])
def test_verbose_before_or_after_the_command(argv: list[str], verbose: bool) -> None:
    assert cli.build_parser().parse_args(argv).verbose is verbose


@pytest.fixture(autouse=True)
def clean_log_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """`main` sets log variables and filters; undo them after each test."""
    for key in (*cli.QUIET_ENVIRONMENT, "VLLM_LOGGING_STREAM"):
        monkeypatch.setenv(key, "")  # records the value to restore, even when unset
        monkeypatch.delenv(key)
    vllm_logger = logging.getLogger("vllm")
    level = vllm_logger.level
    with warnings.catch_warnings():
        yield
    vllm_logger.setLevel(level)


def test_engine_logs_quiet_by_default() -> None:
    import os

    cli.configure_logs(verbose=False)
    assert {k: os.environ[k] for k in cli.QUIET_ENVIRONMENT} == cli.QUIET_ENVIRONMENT
    assert os.environ["VLLM_LOGGING_STREAM"] == "ext://sys.stderr"
    assert logging.getLogger("vllm").level == logging.ERROR


def test_verbose_shows_engine_logs_and_user_settings_win(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    cli.configure_logs(verbose=True)
    assert os.environ["VLLM_LOGGING_LEVEL"] == "INFO"
    assert "PYTHONWARNINGS" not in os.environ
    monkeypatch.setenv("VLLM_LOGGING_LEVEL", "DEBUG")
    cli.configure_logs(verbose=False)
    assert os.environ["VLLM_LOGGING_LEVEL"] == "DEBUG"


@pytest.fixture
def fake_bench(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """`bench allocation` with a stand-in module: no data, no engine."""
    seen: list[Any] = []

    def run(config: Any, args: argparse.Namespace) -> dict[str, Any]:
        seen.append((config, args))
        return {"accuracy": 0.5, "nested": {"a": 1}}

    monkeypatch.setattr(cli, "_bench_module", lambda name: SimpleNamespace(run=run))
    return seen


@pytest.mark.usefixtures("fake_bench")
def test_bench_writes_results_to_docs_results_with_meta(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "docs" / "results").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["bench", "allocation", "--quick", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads((tmp_path / "docs" / "results" / "allocation.json").read_text())
    assert saved == printed
    assert list(saved) == ["meta", "accuracy", "nested"]
    meta = saved["meta"]
    assert meta["bench"] == "allocation" and meta["arguments"]["quick"] is True
    assert {"git_sha", "git_dirty", "date_utc", "machine", "wall_s"} <= set(meta)
    assert {"cpu", "cores", "memory_gib", "os", "python", "vllm", "torch"} <= set(meta["machine"])


@pytest.mark.usefixtures("fake_bench")
def test_bench_out_and_no_save(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # no docs/results here
    assert cli.main(["bench", "allocation"]) == 0
    assert "not saved" in capsys.readouterr().err
    out = tmp_path / "elsewhere" / "a.json"
    assert cli.main(["bench", "allocation", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["accuracy"] == 0.5
    (tmp_path / "docs" / "results").mkdir(parents=True)
    assert cli.main(["bench", "allocation", "--no-save"]) == 0
    assert not (tmp_path / "docs" / "results" / "allocation.json").exists()


def test_remote_engine_bench_has_its_own_results_file() -> None:
    parser = cli.build_parser()
    assert cli._results_name(parser.parse_args(["bench", "engine"])) == "engine"
    remote = parser.parse_args(["bench", "engine", "--remote", "auto"])
    assert cli._results_name(remote) == "engine-remote"


def test_report_errors_name_the_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["report", "--readme", str(tmp_path / "none.md")]) == 2
    assert "--readme" in capsys.readouterr().err
