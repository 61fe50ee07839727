"""Does preloading tcmalloc and Intel OpenMP speed up vLLM's CPU decode here?

vLLM's CPU worker warns at every start that libtcmalloc and libiomp are not in
LD_PRELOAD. This script measures it: each run is a fresh child process (the
in-process engine, as `tidal-agents bench engine` starts it) that times n=1 and
n=8 decode (64 tokens per sample, EOS ignored, so every run generates the same
tokens), with and without LD_PRELOAD, alternating, `--runs` times each. vLLM
spawns its engine-core and worker processes, which inherit LD_PRELOAD from the
environment; each child also reports which of the libraries those processes
really mapped.

    .venv/bin/python scripts/measure_preload.py            # writes docs/results/preload.json
    .venv/bin/python scripts/measure_preload.py --runs 5 --variants default tcmalloc+iomp tcmalloc

Not part of `make test`: it starts the engine `2 * runs` times (minutes each on 2 cores).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import glob
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
#: Debian's libtcmalloc-minimal4, and the same library where other distributions put it
TCMALLOC_PATTERNS = (
    "/usr/lib/*-linux-gnu/libtcmalloc_minimal.so.4",
    "/usr/lib64/libtcmalloc_minimal.so.4",
)
#: shipped by the `intel-openmp` wheel, into the environment's lib/
IOMP_NAME = "libiomp5.so"
QUESTION = "Explain in a few sentences why the sky is blue."


def find_tcmalloc() -> str | None:
    for pattern in TCMALLOC_PATTERNS:
        hits = sorted(glob.glob(pattern))
        if hits:
            return hits[0]
    return None


def find_iomp() -> str | None:
    path = Path(sys.prefix) / "lib" / IOMP_NAME
    return str(path) if path.is_file() else None


def variant_preload(variant: str) -> str | None:
    """The LD_PRELOAD value of `variant` (None: leave LD_PRELOAD unset)."""
    if variant == "default":
        return None
    libs = {"tcmalloc": find_tcmalloc(), "iomp": find_iomp()}
    wanted = variant.split("+")
    missing = [name for name in wanted if libs.get(name) is None]
    if missing:
        raise SystemExit(f"variant {variant!r}: {', '.join(missing)} not found on this machine")
    return ":".join(str(libs[name]) for name in wanted)


def _mapped_libraries(pid: int) -> list[str]:
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return []
    names = ("libtcmalloc", "libiomp5", "libgomp")
    return sorted({n for n in names if n in maps})


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in glob.glob(f"/proc/{pid}/task/*/children"):
        try:
            out += [int(x) for x in Path(task).read_text().split()]
        except OSError:
            continue
    return out + [g for c in out for g in _children(c)]


async def _decode(engine: Any, max_tokens: int, repeats: int) -> dict[str, Any]:
    from tidal_agents.engine import GenerationRequest

    prompt = engine.apply_chat_template([{"role": "user", "content": QUESTION}])

    def request(n: int) -> Any:
        return GenerationRequest(prompt=prompt, n=n, temperature=0.8, max_tokens=max_tokens,
                                 ignore_eos=True)

    await engine.generate(request(2))  # warm-up
    tok_s: dict[str, list[float]] = {"n1": [], "n8": []}
    for i in range(repeats):
        for n in ((1, 8) if i % 2 == 0 else (8, 1)):
            r = await engine.generate(request(n))
            assert r.generated_tokens == n * max_tokens, r.generated_tokens
            tok_s[f"n{n}"].append(r.generated_tokens / r.wall_s)
    return {f"tok_s_{k}": statistics.median(v) for k, v in tok_s.items()}


def child(max_tokens: int, repeats: int) -> None:
    """One measurement in this process; prints one JSON line."""
    from tidal_agents.engine import LocalVLLMEngine

    engine = LocalVLLMEngine()
    t0 = time.perf_counter()
    engine.start()
    startup = time.perf_counter() - t0
    try:
        figures = asyncio.run(_decode(engine, max_tokens, repeats))
        mapped = {str(pid): _mapped_libraries(pid) for pid in _children(os.getpid())}
    finally:
        engine.shutdown()
    print(json.dumps({"startup_s": startup, **figures,
                      "engine_processes_mapped": {k: v for k, v in mapped.items() if v}}))


def run_child(variant: str, max_tokens: int, repeats: int) -> dict[str, Any]:
    env = os.environ.copy()
    env.pop("LD_PRELOAD", None)
    preload = variant_preload(variant)
    if preload:
        env["LD_PRELOAD"] = preload
    env.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    cmd = [sys.executable, __file__, "--child", "--max-tokens", str(max_tokens),
           "--repeats", str(repeats)]
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"child ({variant}) failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return {"variant": variant, "ld_preload": preload, **result}


def summarize(runs: list[dict[str, Any]], variants: list[str]) -> dict[str, Any]:
    """Medians per variant and each variant's gain over 'default' (median tok/s ratio - 1)."""
    out: dict[str, Any] = {}
    for v in variants:
        mine = [r for r in runs if r["variant"] == v]
        out[v] = {key: statistics.median(r[key] for r in mine)
                  for key in ("tok_s_n1", "tok_s_n8", "startup_s")}
        out[v]["runs"] = len(mine)
    base = out.get("default")
    if base:
        for v in variants:
            if v != "default":
                out[v]["gain_vs_default"] = {
                    key: out[v][key] / base[key] - 1 for key in ("tok_s_n1", "tok_s_n8")
                }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="child processes per variant")
    parser.add_argument("--repeats", type=int, default=3,
                        help="n=1 and n=8 requests per child (median taken)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--variants", nargs="+", default=["default", "tcmalloc+iomp"],
                        help="'default' (no LD_PRELOAD of ours) or libraries joined by '+' "
                        "from: tcmalloc, iomp")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/results/preload.json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.max_tokens, args.repeats)
        return 0
    for v in args.variants:
        variant_preload(v)  # fail before any run when a library is missing
    runs: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for i in range(args.runs):
        # alternate the order so that drifting load hits every variant alike
        order = args.variants if i % 2 == 0 else args.variants[::-1]
        for v in order:
            runs.append(run_child(v, args.max_tokens, args.repeats))
            print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    document = {
        "meta": {
            "script": "scripts/measure_preload.py",
            "date_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "arguments": {k: (str(v) if isinstance(v, Path) else v)
                          for k, v in vars(args).items() if k != "child"},
            "cores": len(os.sched_getaffinity(0)),
            "wall_s": round(time.perf_counter() - t0, 1),
        },
        "summary": summarize(runs, args.variants),
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(document["summary"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
