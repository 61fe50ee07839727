"""Check our reimplemented vLLM beam search (strategy `vllm_beam`) against vLLM's own.

Runs vLLM's offline ``LLM.beam_search`` (``BeamSearchParams``) and our `vllm_beam`
strategy on the same chat prompts (the same prompt token ids) at the same width
and token limit, each in its own child process with the engine settings the
package uses, and compares the returned beams: the same generated token ids in
the same order, and the same cumulative log-probs and length-penalised scores
within `--tolerance`. Writes docs/results/vllm_beam_check.json; exits 1 on a
mismatch.

    .venv/bin/python scripts/check_vllm_beam.py

Not part of `make test` (it starts the engine twice; minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
QUESTIONS = (
    "What is 7 + 8?",
    "What is 23 + 19? Answer with the number.",
    "Name the capital of France.",
)


def _chat(tokenizer: Any, question: str) -> str:
    messages = [{"role": "user", "content": question}]
    return str(tokenizer.apply_chat_template(messages, tokenize=False,
                                             add_generation_prompt=True))


def side_vllm(widths: list[int], max_tokens: int) -> list[dict[str, Any]]:
    """vLLM's own beam search (offline LLM), one call per width over all prompts."""
    from vllm import LLM
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import BeamSearchParams

    from tidal_agents.engine import EngineConfig
    from tidal_agents.models import resolve_model

    config = EngineConfig()
    config.apply_environment()
    llm = LLM(**config.vllm_engine_args(resolve_model(config.model)))
    tok = llm.get_tokenizer()
    eos = tok.eos_token_id
    prompts = [tok.encode(_chat(tok, q), add_special_tokens=False) for q in QUESTIONS]
    out: list[dict[str, Any]] = []
    for width in widths:
        results = llm.beam_search([TokensPrompt(prompt_token_ids=p) for p in prompts],
                                  BeamSearchParams(beam_width=width, max_tokens=max_tokens))
        for question, ids, result in zip(QUESTIONS, prompts, results, strict=True):
            beams = []
            for seq in result.sequences:
                gen = list(seq.tokens[len(ids):])
                finished = bool(gen) and gen[-1] == eos
                beams.append({
                    "token_ids": gen[:-1] if finished else gen,
                    "ended_with_eos": finished,
                    "cum_logprob": float(seq.cum_logprob),
                    "score": _vllm_score(seq, eos),
                    "text": tok.decode(gen, skip_special_tokens=True),
                })
            out.append({"question": question, "width": width, "prompt_ids": ids, "beams": beams})
    return out


def _vllm_score(seq: Any, eos: int) -> float:
    from vllm.entrypoints.generate.beam_search.utils import get_beam_search_score

    return float(get_beam_search_score(seq.tokens, seq.cum_logprob, eos, 1.0))


def side_ours(widths: list[int], max_tokens: int) -> list[dict[str, Any]]:
    """Our `vllm_beam` strategy on the in-process engine, one prompt at a time."""
    from tidal_agents.engine import LocalVLLMEngine
    from tidal_agents.strategies import StepInput, StrategyConfig, run_strategy

    engine = LocalVLLMEngine().start()
    out: list[dict[str, Any]] = []
    try:
        for width in widths:
            for question in QUESTIONS:
                prompt = engine.apply_chat_template([{"role": "user", "content": question}])
                config = StrategyConfig("vllm_beam", n=width, max_tokens=max_tokens)
                result = asyncio.run(run_strategy(engine, StepInput(prompt=prompt), config))
                beams = [{
                    "token_ids": list(c.token_ids),
                    "ended_with_eos": c.finish_reason == "stop",
                    "cum_logprob": float(sum(c.token_logprobs)),
                    "score": float(c.score if c.score is not None else float("nan")),
                    "text": c.text,
                } for c in result.candidates]
                out.append({"question": question, "width": width,
                            "prompt_ids": engine.encode(prompt), "beams": beams})
    finally:
        engine.shutdown()
    return out


def compare(theirs: list[dict[str, Any]], ours: list[dict[str, Any]],
            tolerance: float) -> list[dict[str, Any]]:
    """Per (prompt, width): same prompt ids, same beams in the same order, scores close."""
    checks = []
    for v, o in zip(theirs, ours, strict=True):
        assert (v["question"], v["width"]) == (o["question"], o["width"])
        same_beams = [b["token_ids"] for b in v["beams"]] == [b["token_ids"] for b in o["beams"]]
        same_eos = ([b["ended_with_eos"] for b in v["beams"]]
                    == [b["ended_with_eos"] for b in o["beams"]])
        diffs = [max(abs(a["score"] - b["score"]), abs(a["cum_logprob"] - b["cum_logprob"]))
                 for a, b in zip(v["beams"], o["beams"], strict=False)]
        max_diff = max(diffs) if diffs else 0.0
        checks.append({
            "question": v["question"],
            "width": v["width"],
            "same_prompt_ids": v["prompt_ids"] == o["prompt_ids"],
            "same_beams": same_beams,
            "same_eos_endings": same_eos,
            "max_abs_score_or_logprob_diff": max_diff,
            "match": bool(v["prompt_ids"] == o["prompt_ids"] and same_beams and same_eos
                          and max_diff <= tolerance),
            "vllm_beams": v["beams"],
            "our_beams": o["beams"],
        })
    return checks


def _child(side: str, widths: list[int], max_tokens: int) -> list[dict[str, Any]]:
    env = {**os.environ, "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "ERROR")}
    cmd = [sys.executable, __file__, "--side", side, "--max-tokens", str(max_tokens),
           "--widths", *map(str, widths)]
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise SystemExit(f"{side} side failed:\n{done.stderr[-3000:]}")
    rows: list[dict[str, Any]] = json.loads(done.stdout.strip().splitlines()[-1])
    return rows


def _git_sha() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--tolerance", type=float, default=0.02,
                        help="largest allowed difference of a beam's score or cumulative "
                        "log-prob (bfloat16 kernels batch differently in the two runs)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/results/vllm_beam_check.json")
    parser.add_argument("--side", choices=["vllm", "ours"], default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.side is not None:
        run = side_vllm if args.side == "vllm" else side_ours
        print(json.dumps(run(args.widths, args.max_tokens)))
        return 0
    t0 = time.perf_counter()
    theirs = _child("vllm", args.widths, args.max_tokens)
    ours = _child("ours", args.widths, args.max_tokens)
    checks = compare(theirs, ours, args.tolerance)
    import vllm

    document = {
        "meta": {
            "script": "scripts/check_vllm_beam.py",
            "git_sha": _git_sha(),
            "date_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "vllm": vllm.__version__,
            "arguments": {"widths": args.widths, "max_tokens": args.max_tokens,
                          "tolerance": args.tolerance},
            "wall_s": round(time.perf_counter() - t0, 1),
        },
        "all_match": all(c["match"] for c in checks),
        "matched": sum(c["match"] for c in checks),
        "checked": len(checks),
        "checks": checks,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    for c in checks:
        print(f"width {c['width']} {c['question']!r}: match={c['match']} "
              f"(beams {c['same_beams']}, max diff {c['max_abs_score_or_logprob_diff']:.2e})")
    return 0 if document["all_match"] else 1


if __name__ == "__main__":
    sys.exit(main())
