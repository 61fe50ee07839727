"""`tidal-agents bench engine`: start-up, throughput, and one n=8 request against 8 n=1
requests, concurrent (the fair baseline) and sequential, interleaved in one run."""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from tidal_agents.bench.stats import rotated, spread
from tidal_agents.engine import EngineConfig, GenerationRequest, LocalVLLMEngine
from tidal_agents.engine.remote import RemoteVLLMEngine
from tidal_agents.engine.vllm_server import VLLMServer

_QUESTION = "Explain in a few sentences why the sky is blue."


#: what the figures of `run` mean where the name alone could mislead
DEFINITIONS: dict[str, str] = {
    "n8_vs_8x_n1_ratio": "unchanged: wall time of one n=8 request / 8 SEQUENTIAL n=1 "
    "requests, sums over the repeats (vLLM's batching, not a fair baseline)",
    "n8_vs_8x_n1_concurrent_ratio": "median over interleaved repeats of wall(one n=8 "
    "request) / wall(8 CONCURRENT n=1 requests, asyncio.gather): the fair baseline",
    "tok_s_n1": "generated tokens per second of one n=1 request (EOS ignored), over repeats",
    "tok_s_n8": "generated tokens per second of one n=8 request (EOS ignored), over repeats",
}


async def _measure(engine: LocalVLLMEngine, max_tokens: int, repeats: int) -> dict[str, Any]:
    prompt = engine.apply_chat_template([{"role": "user", "content": _QUESTION}])

    def req(n: int) -> GenerationRequest:
        # ignore_eos: every sample generates exactly max_tokens, so runs compare
        return GenerationRequest(
            prompt=prompt, n=n, temperature=0.8, max_tokens=max_tokens, ignore_eos=True
        )

    async def n1() -> int:
        return (await engine.generate(req(1))).generated_tokens

    async def n8() -> int:
        return (await engine.generate(req(8))).generated_tokens

    async def concurrent() -> int:
        return sum(r.generated_tokens
                   for r in await asyncio.gather(*(engine.generate(req(1)) for _ in range(8))))

    async def sequential() -> int:
        return sum([(await engine.generate(req(1))).generated_tokens for _ in range(8)])

    runs = {"n1": n1, "n8": n8, "concurrent": concurrent, "sequential": sequential}
    await engine.generate(req(2))  # warm-up: first-request costs are not throughput
    walls: dict[str, list[float]] = {k: [] for k in runs}
    tokens = dict.fromkeys(runs, 0)
    for i in range(repeats):
        for name in rotated(list(runs), i):  # interleaved: drifts in load hit every side
            t0 = time.perf_counter()
            tokens[name] += await runs[name]()
            walls[name].append(time.perf_counter() - t0)
    concurrent_ratios = [a / b for a, b in zip(walls["n8"], walls["concurrent"], strict=True)]
    sequential_ratios = [a / b for a, b in zip(walls["n8"], walls["sequential"], strict=True)]
    return {
        "tok_s_n1": tokens["n1"] / sum(walls["n1"]),
        "tok_s_n8": tokens["n8"] / sum(walls["n8"]),
        "n8_vs_8x_n1_ratio": sum(walls["n8"]) / sum(walls["sequential"]),
        "n8_vs_8x_n1_ratio_spread": spread(sequential_ratios),
        "n8_vs_8x_n1_concurrent_ratio": statistics.median(concurrent_ratios),
        "n8_vs_8x_n1_concurrent_ratio_spread": spread(concurrent_ratios),
        "n8_wall_s": sum(walls["n8"]) / repeats,
        "concurrent_8x_n1_wall_s": sum(walls["concurrent"]) / repeats,
        "sequential_8x_n1_wall_s": sum(walls["sequential"]) / repeats,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`tidal-agents bench engine`'s options."""
    parser.add_argument("--max-tokens", type=int, default=64,
                        help="tokens per sample (every sample generates exactly this many)")
    parser.add_argument(
        "--remote", default=None, metavar="URL",
        help="compare a `vllm serve` at URL ('auto': start one here) with the in-process engine",
    )


def run(
    config: EngineConfig | None = None, max_tokens: int = 64, repeats: int = 3
) -> dict[str, Any]:
    engine = LocalVLLMEngine(config)
    t0 = time.perf_counter()
    engine.start()
    startup = time.perf_counter() - t0
    try:
        figures = asyncio.run(_measure(engine, max_tokens, repeats))
    finally:
        engine.shutdown()
    return {"startup_s": startup, **figures, "max_tokens": max_tokens, "repeats": repeats,
            "backend": engine.backend_id, "definitions": DEFINITIONS}


async def _remote_vs_local(
    local: LocalVLLMEngine, remote: Any, max_tokens: int, repeats: int
) -> dict[str, Any]:
    """The same requests on both backends, alternating, one at a time."""
    prompt = local.apply_chat_template([{"role": "user", "content": _QUESTION}])
    walls: dict[tuple[str, int], list[float]] = {}
    first: dict[str, list[float]] = {"local": [], "remote": []}
    for eng in (local, remote):  # warm-up, not measured
        await eng.generate(GenerationRequest(prompt=prompt, n=2, temperature=0.8, max_tokens=4))
    for i in range(repeats):
        for n in (1, 8):
            order = [("local", local), ("remote", remote)]
            for name, eng in order if i % 2 == 0 else order[::-1]:
                r = await eng.generate(GenerationRequest(
                    prompt=prompt, n=n, temperature=0.8, max_tokens=max_tokens, ignore_eos=True
                ))
                assert r.generated_tokens == n * max_tokens
                walls.setdefault((name, n), []).append(r.wall_s)
                if r.first_token_s is not None:
                    first[name].append(r.first_token_s)

    def ratio(n: int) -> float:
        return sum(walls[("remote", n)]) / sum(walls[("local", n)])

    return {
        "remote_vs_local_wall_ratio_n1": ratio(1),
        "remote_vs_local_wall_ratio_n8": ratio(8),
        "local_wall_s_n1": sum(walls[("local", 1)]) / repeats,
        "remote_wall_s_n1": sum(walls[("remote", 1)]) / repeats,
        "local_first_token_s": sum(first["local"]) / max(len(first["local"]), 1),
        "remote_first_token_s": sum(first["remote"]) / max(len(first["remote"]), 1),
    }


def run_remote(
    config: EngineConfig | None, url: str, max_tokens: int = 64, repeats: int = 3
) -> dict[str, Any]:
    """Remote (`vllm serve` at `url`, or one started here for "auto") vs in-process."""
    server = VLLMServer(config).start() if url == "auto" else None
    remote = RemoteVLLMEngine(server.url if server else url).start()
    local = LocalVLLMEngine(config).start()
    ids = {"remote": remote.backend_id, "local": local.backend_id}
    try:
        figures = asyncio.run(_remote_vs_local(local, remote, max_tokens, repeats))
    finally:
        remote.shutdown()
        local.shutdown()
        if server is not None:
            server.stop()
    return {**figures, "max_tokens": max_tokens, "repeats": repeats, **ids,
            "remote_server_startup_s": server.startup_s if server else None}
