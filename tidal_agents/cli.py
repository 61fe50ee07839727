"""`tidal-agents`: demo | model | calibrate | collect | train | bench NAME | report | serve ...

Each sub-command is a small function; heavy imports happen inside them, and a
sub-command's options defined in another module load only when that sub-command
is parsed, so that `tidal-agents --help` answers at once.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tidal_agents.bench.results import RESULTS_DIR
from tidal_agents.errors import TidalConfigError, TidalError


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


def cmd_model(args: argparse.Namespace) -> int:
    from tidal_agents.models import embedded_model_dir, is_prepared, prepare_embedded_model

    if args.action == "prepare":
        path = prepare_embedded_model(force=args.force)
        print(path)
    else:  # path
        print(embedded_model_dir(), "(prepared)" if is_prepared() else "(not prepared yet)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from tidal_agents.demo import run_demo

    return run_demo(deadline_s=args.deadline, trace_dir=args.trace_dir)


#: `tidal-agents bench <name>`: what each measures (its module's docstring says more)
BENCHES: dict[str, str] = {
    "engine": "start-up, decode throughput, one n=8 request vs n=1 requests",
    "strategies": "our strategies vs bare vLLM side by side, and their accuracy",
    "allocation": "adaptive allocation vs static configurations vs oracle (offline, no engine)",
    "episodes": "agent episodes under deadlines, adaptive vs static policies",
    "load": "many concurrent episodes with deadlines on one engine",
    "invoke": "the default chat model vs each fixed strategy on held-out steps, via invoke",
}
#: benches that draw their own progress bars (the others get a spinner with elapsed time)
_OWN_PROGRESS = frozenset({"episodes"})
#: benches that run without the engine (no --model)
_OFFLINE_BENCHES = frozenset({"allocation"})


@contextmanager
def progress(label: str, show: bool = True) -> Iterator[None]:
    """A spinner with elapsed time on stderr while a long command runs (stdout stays clean)."""
    if not show:
        yield
        return
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    # stderr written meanwhile (logs, tables) is printed above the spinner; stdout is
    # left alone, so that results printed during the command stay on stdout
    with Progress(*columns, console=Console(stderr=True), transient=True,
                  redirect_stdout=False) as bar:
        bar.add_task(label, total=None)
        yield


def _bench_module(name: str) -> Any:
    return importlib.import_module(f"tidal_agents.bench.{name}")


def _results_name(args: argparse.Namespace) -> str:
    """The results file's name: a remote comparison is not the in-process engine bench."""
    return "engine-remote" if args.bench == "engine" and args.remote else args.bench


def _run_bench(args: argparse.Namespace) -> dict[str, Any]:
    module = _bench_module(args.bench)
    if args.bench in _OFFLINE_BENCHES:
        return dict(module.run(None, args))
    from tidal_agents.engine import EngineConfig

    config = EngineConfig(model=args.model)
    if args.bench == "engine":
        if args.remote:
            return dict(module.run_remote(config, args.remote, max_tokens=args.max_tokens))
        return dict(module.run(config, max_tokens=args.max_tokens))
    return dict(module.run(config, args))


def cmd_bench(args: argparse.Namespace) -> int:
    from tidal_agents.bench.results import results_document, save_results

    name = _results_name(args)
    t0 = time.perf_counter()
    with progress(f"bench {args.bench}", show=args.bench not in _OWN_PROGRESS):
        figures = _run_bench(args)
    wall_s = time.perf_counter() - t0
    if args.no_save:
        document = results_document(name, figures, args, wall_s)
    else:
        document, path = save_results(name, figures, args, wall_s, out=args.out)
        print(f"results: {path}" if path else "results not saved: no docs/results/ in the "
              "current directory (run from the repository, or give --out PATH)", file=sys.stderr)
    if args.json:
        _print_json(document)
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"bench {args.bench}")
        table.add_column("figure")
        table.add_column("value", justify="right")
        for key, value in figures.items():
            table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
        Console().print(table)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from tidal_agents.bench.report import run_report

    return run_report(args.readme, args.results_dir, check=args.check)


def cmd_calibrate(args: argparse.Namespace) -> int:
    from tidal_agents.allocation.calibrate import calibrate, summary
    from tidal_agents.allocation.cost_model import default_path
    from tidal_agents.engine import EngineConfig, get_engine

    engine: Any
    if args.engine_url:
        from tidal_agents.engine.remote import get_remote_engine

        engine = get_remote_engine(args.engine_url, model=args.model)
    else:
        engine = get_engine(EngineConfig(model=args.model))
    t0 = time.perf_counter()
    with progress("calibrate"):
        model = calibrate(engine, quick=args.quick)
    print(summary(model))
    print(f"saved to {default_path(engine.backend_id)}")
    if args.out is not None:
        from tidal_agents.allocation.calibrate import results_figures
        from tidal_agents.bench.results import save_results

        _, path = save_results("calibration", results_figures(model), args,
                               time.perf_counter() - t0, out=args.out)
        print(f"results: {path}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from pydantic import SecretStr

    from tidal_agents.chat_model import TidalChatModel
    from tidal_agents.integrations.openai_server import ServerSettings, serve

    key = args.api_key or os.environ.get("TIDAL_API_KEY")
    try:
        settings = ServerSettings(
            host=args.host, port=args.port, allow_remote=args.allow_remote,
            api_key=SecretStr(key) if key else None,
            served_model_name=args.served_model_name, max_tokens_limit=args.max_tokens_limit,
            max_request_bytes=args.max_request_bytes,
        )
    except ValueError as exc:
        raise TidalConfigError(str(exc)) from exc
    settings.check()
    model = TidalChatModel(model_name=args.model, base_url=args.engine_url)
    print(f"serving OpenAI-compatible chat completions on http://{args.host}:{args.port}/v1",
          file=sys.stderr)
    serve(model, settings)
    return 0


def cmd_vllm_serve(args: argparse.Namespace) -> int:
    import signal

    from tidal_agents.engine import EngineConfig
    from tidal_agents.engine.vllm_server import start_servers

    servers = start_servers(args.count, config=EngineConfig(model=args.model))
    for s in servers:
        print(s.url, flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        signal.pause()  # until Ctrl-C or SIGTERM
    except KeyboardInterrupt:
        pass
    finally:
        for s in servers:
            s.stop()
    return 0


def _command_module(
    module_name: str, spinner: bool
) -> Callable[[argparse.Namespace], int]:
    """collect / train: options and body live in their evaluation module; `spinner`
    for a module that draws no progress bar of its own."""

    def run(args: argparse.Namespace) -> int:
        with progress(args.command, show=spinner):
            return int(importlib.import_module(module_name).run(args) or 0)

    return run


class LazyOptionsParser(argparse.ArgumentParser):
    """A sub-command parser whose options are added only when that sub-command is parsed
    or its help shown: the modules that define them load only then (`--help` stays fast)."""

    def __init__(self, *args: Any,
                 add_options: Callable[[argparse.ArgumentParser], None] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._add_options = add_options

    def _load_options(self) -> None:
        add, self._add_options = self._add_options, None
        if add is not None:
            add(self)

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        self._load_options()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._load_options()
        return super().format_help()


def _module_options(module_name: str) -> Callable[[argparse.ArgumentParser], None]:
    """Adds the options `module_name.add_arguments` defines; its docstring is the description."""

    def add(parser: argparse.ArgumentParser) -> None:
        module = importlib.import_module(module_name)
        parser.description = module.__doc__
        module.add_arguments(parser)

    return add


def _bench_options(name: str) -> Callable[[argparse.ArgumentParser], None]:
    """The bench module's own options, then the results options every bench shares."""
    own = _module_options(f"tidal_agents.bench.{name}")

    def add(parser: argparse.ArgumentParser) -> None:
        own(parser)
        if name not in _OFFLINE_BENCHES:
            parser.add_argument("--model", default=None,
                                help="HF model folder (default: embedded)")
        parser.add_argument("--json", action="store_true",
                            help="print the results (figures and meta) as one JSON object")
        parser.add_argument("--out", type=Path, default=None, metavar="PATH",
                            help=f"write the results here (default: docs/results/{name}.json "
                            "when run from the repository)")
        parser.add_argument("--no-save", action="store_true", help="do not write the results")

    return add


#: what `--verbose` leaves alone; without it, set before vLLM, torch or transformers load.
#: PYTHONWARNINGS reaches the engine's worker processes, which inherit the environment.
QUIET_ENVIRONMENT = {
    "VLLM_LOGGING_LEVEL": "ERROR",
    "TRANSFORMERS_VERBOSITY": "error",
    "TORCH_CPP_LOG_LEVEL": "ERROR",
    "PYTHONWARNINGS": "ignore",
}
#: libraries whose Python warnings (deprecations, CPU fallbacks) are hidden without --verbose
NOISY_LIBRARIES = ("vllm", "torch", "transformers", "triton")


def configure_logs(verbose: bool) -> None:
    """Engine logs quiet unless `verbose`; never overrides a variable the user set.

    Library logs go to stderr so that stdout carries only results (`bench --json`).
    """
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    if verbose:
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "INFO")
        return
    for key, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    for library in NOISY_LIBRARIES:
        warnings.filterwarnings("ignore", module=rf"{library}(\.|$)")
    # vLLM reads its level from the environment when first imported; this covers a
    # process where it is already loaded.
    logging.getLogger("vllm").setLevel(
        getattr(logging, os.environ["VLLM_LOGGING_LEVEL"].upper(), logging.ERROR)
    )


def _verbose_option(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", default=default,
                        help="show the engine's (vLLM, torch) logs and warnings")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tidal-agents",
        description="Latency- and token-aware test-time compute for LangChain agents.",
    )
    _verbose_option(parser, default=False)
    # each sub-command also takes --verbose after its name; SUPPRESS keeps the
    # top-level value when it is not given there
    shared = LazyOptionsParser(add_help=False)
    _verbose_option(shared, default=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=LazyOptionsParser)

    def command(name: str, text: str, **kwargs: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, description=kwargs.pop("description", text),
                              parents=[shared], **kwargs)

    p = command("demo", "run an agent episode with a deadline and print its trace")
    p.add_argument("--deadline", type=float, default=60.0, help="episode deadline, seconds")
    p.add_argument("--trace-dir", default=None, help="where to write the JSONL trace and plot")
    p.set_defaults(func=cmd_demo)

    p = command("model", "prepare or locate the embedded model")
    p.add_argument("action", choices=["prepare", "path"])
    p.add_argument("--force", action="store_true", help="convert again even if prepared")
    p.set_defaults(func=cmd_model)

    p = command("calibrate", "measure this engine's costs; save the cost model")
    p.add_argument("--model", default=None, help="HF model folder (default: embedded); "
                   "with --engine-url, the served model name")
    p.add_argument("--quick", action="store_true", help="a shorter sweep")
    p.add_argument("--engine-url", action="append", default=None, metavar="URL",
                   help="calibrate these `vllm serve` replicas instead (repeatable)")
    p.add_argument("--out", type=Path, default=None, metavar="PATH",
                   help="also write the fit and its reference predictions, with meta, here "
                   "(e.g. docs/results/calibration.json)")
    p.set_defaults(func=cmd_calibrate)

    for name, module, text, spinner in (
        ("collect", "tidal_agents.evaluation.collect", "run every configuration on a task set",
         False),  # collect draws its own bars
        ("train", "tidal_agents.evaluation.train", "fit the accuracy predictor", True),
    ):
        p = command(name, text, formatter_class=argparse.RawDescriptionHelpFormatter,
                    add_options=_module_options(module))
        p.set_defaults(func=_command_module(module, spinner))

    p = command("bench", "benchmarks measured side by side in one run; results to "
                "docs/results/", description="Benchmarks. `tidal-agents bench NAME --help` "
                "lists a bench's options. Each writes its results (figures, git commit, date, "
                "machine, arguments) to docs/results/NAME.json when run from the repository.")
    benches = p.add_subparsers(dest="bench", required=True, metavar="NAME",
                               parser_class=LazyOptionsParser)
    for name, text in BENCHES.items():
        b = benches.add_parser(name, help=text, parents=[shared], add_options=_bench_options(name),
                               formatter_class=argparse.RawDescriptionHelpFormatter)
        b.set_defaults(func=cmd_bench)

    p = command("report", "regenerate README's figures table from docs/results/*.json")
    p.add_argument("--check", action="store_true",
                   help="change nothing; exit 1 if README differs from the results")
    p.add_argument("--readme", type=Path, default=Path("README.md"))
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    p.set_defaults(func=cmd_report)

    p = command("serve", "OpenAI-compatible HTTP front with allocation per request")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--allow-remote", action="store_true",
                   help="allow a non-loopback --host (an API key is then required)")
    p.add_argument("--api-key", default=None,
                   help="required bearer token (default: $TIDAL_API_KEY, else none)")
    p.add_argument("--model", default=None, help="HF model folder (default: embedded)")
    p.add_argument("--engine-url", action="append", default=None, metavar="URL",
                   help="generate on these `vllm serve` replicas (repeatable)")
    p.add_argument("--max-tokens-limit", type=int, default=1024)
    p.add_argument("--max-request-bytes", type=int, default=1_000_000)
    p.add_argument("--served-model-name", default="tidal")
    p.set_defaults(func=cmd_serve)

    p = command("vllm-serve", "start `vllm serve` replicas on loopback with this package's "
                "engine settings (for --engine-url / base_url)")
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--model", default=None, help="HF model folder (default: embedded)")
    p.set_defaults(func=cmd_vllm_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logs(verbose=args.verbose)  # before any sub-command imports vLLM
    try:
        return int(args.func(args))
    except TidalError as exc:
        print(f"tidal-agents: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
