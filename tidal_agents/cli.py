"""`tidal-agents`: demo | model | calibrate | bench ...

Each sub-command is a small function; heavy imports happen inside them so that
`tidal-agents --help` answers at once.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

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


def cmd_bench(args: argparse.Namespace) -> int:
    from tidal_agents.engine import EngineConfig

    config = EngineConfig(model=args.model)
    runners: dict[str, Callable[[], dict[str, Any]]] = {}
    if args.what == "engine":
        from tidal_agents.bench import engine as bench_engine

        if args.remote:
            runners["engine"] = lambda: bench_engine.run_remote(
                config, args.remote, max_tokens=args.max_tokens
            )
        else:
            runners["engine"] = lambda: bench_engine.run(config, max_tokens=args.max_tokens)
    else:
        import importlib

        module = importlib.import_module(f"tidal_agents.bench.{args.what}")
        runners[args.what] = lambda: module.run(config, args)
    figures = runners[args.what]()
    if args.json:
        _print_json(figures)
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"bench {args.what}")
        table.add_column("figure")
        table.add_column("value", justify="right")
        for key, value in figures.items():
            table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
        Console().print(table)
    return 0


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
    model = calibrate(engine, quick=args.quick)
    print(summary(model))
    print(f"saved to {default_path(engine.backend_id)}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import os

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


def cmd_passthrough(module_name: str) -> Callable[[argparse.Namespace], int]:
    """collect / train keep their own argument parsers."""

    def run(args: argparse.Namespace) -> int:
        import importlib

        module = importlib.import_module(module_name)
        return int(module.main(args.rest) or 0)

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tidal-agents",
        description="Latency- and token-aware test-time compute for LangChain agents.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="run an agent episode with a deadline and print its trace")
    p.add_argument("--deadline", type=float, default=60.0, help="episode deadline, seconds")
    p.add_argument("--trace-dir", default=None, help="where to write the JSONL trace and plot")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("model", help="prepare or locate the embedded model")
    p.add_argument("action", choices=["prepare", "path"])
    p.add_argument("--force", action="store_true", help="convert again even if prepared")
    p.set_defaults(func=cmd_model)

    p = sub.add_parser("calibrate", help="measure this engine's costs; save the cost model")
    p.add_argument("--model", default=None, help="HF model folder (default: embedded); "
                   "with --engine-url, the served model name")
    p.add_argument("--quick", action="store_true", help="a shorter sweep")
    p.add_argument("--engine-url", action="append", default=None, metavar="URL",
                   help="calibrate these `vllm serve` replicas instead (repeatable)")
    p.set_defaults(func=cmd_calibrate)

    for name, module, text in (
        ("collect", "tidal_agents.evaluation.collect", "run every configuration on a task set"),
        ("train", "tidal_agents.evaluation.train", "fit the accuracy predictor"),
    ):
        p = sub.add_parser(name, help=text, add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=cmd_passthrough(module))

    p = sub.add_parser("bench", help="benchmarks measured side by side in one run")
    p.add_argument(
        "what", choices=["engine", "strategies", "allocation", "episodes", "load"]
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--model", default=None, help="HF model folder (default: embedded)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--quick", action="store_true", help="fewer items (for smoke tests)")
    p.add_argument("--deadline", type=float, default=None,
                   help="bench load: each episode's deadline, seconds (default 60)")
    p.add_argument("--deadlines", type=float, nargs="+", default=None, metavar="S",
                   help="bench episodes: episode deadlines in seconds "
                   "(default 2.5 4 8; --quick: 4 15)")
    p.add_argument("--tasks", type=int, default=None,
                   help="bench episodes: number of tasks (default 48; --quick: 3)")
    p.add_argument("--kinds", nargs="+", default=None, metavar="KIND",
                   help="bench episodes: task kinds (default: the one-call kinds)")
    p.add_argument("--seed", type=int, default=0, help="bench episodes: task seed (default 0)")
    p.add_argument("--episodes-out", default=None, metavar="PATH",
                   help="bench episodes: write every graded episode here (JSONL)")
    p.add_argument(
        "--remote", default=None, metavar="URL",
        help="bench engine: compare a `vllm serve` at URL ('auto': start one here) "
        "with the in-process engine",
    )
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("serve", help="OpenAI-compatible HTTP front with allocation per request")
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

    p = sub.add_parser("vllm-serve", help="start `vllm serve` replicas on loopback with "
                       "this package's engine settings (for --engine-url / base_url)")
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--model", default=None, help="HF model folder (default: embedded)")
    p.set_defaults(func=cmd_vllm_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    import os

    # Before vLLM is imported anywhere: its logs go to stderr, results to stdout.
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except TidalError as exc:
        print(f"tidal-agents: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
