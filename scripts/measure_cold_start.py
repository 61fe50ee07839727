"""Where the first request on a fresh engine spends its time (run outside make test).

Starts the in-process engine with and without start-up warm-up, then times, in
order: a greedy request, the same again, an 8-sample request with log-probs, the
same again, a tool-call grammar request, the same grammar again, and a new tool
set's grammar. Writes docs/results/cold_start.json.

    .venv/bin/python scripts/measure_cold_start.py
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from tidal_agents import tool_protocol as tp
from tidal_agents.engine import EngineConfig, GenerationRequest, LocalVLLMEngine

PROMPT = "<|im_start|>user\nWhat is 12 times 7?<|im_end|>\n<|im_start|>assistant\n"


def _tools(name: str) -> list[tp.ToolSpec]:
    return tp.to_tool_specs([{"type": "function", "function": {
        "name": name, "description": f"{name} two numbers",
        "parameters": {"type": "object", "properties": {"a": {"type": "number"},
                                                         "b": {"type": "number"}},
                       "required": ["a", "b"]}}}])


def _timed(engine: LocalVLLMEngine, request: GenerationRequest) -> float:
    t0 = time.perf_counter()
    engine.generate_sync(request)
    return round(time.perf_counter() - t0, 3)


def measure(warm_up: bool) -> dict[str, float]:
    engine = LocalVLLMEngine(EngineConfig(warm_up=warm_up))
    t0 = time.perf_counter()
    engine.start()
    out = {"start_s": round(time.perf_counter() - t0, 3)}
    greedy = GenerationRequest(prompt=PROMPT, max_tokens=16, logprobs=0)
    sampled = GenerationRequest(prompt=PROMPT, n=8, temperature=0.7, max_tokens=16, logprobs=0)
    auto = tp.parse_tool_choice("auto", _tools("multiply"))
    grammar = tp.reply_grammar(_tools("multiply"), auto, False)
    new_grammar = tp.reply_grammar(_tools("divide"), auto, False)
    out["greedy_first_s"] = _timed(engine, greedy)
    out["greedy_again_s"] = _timed(engine, greedy)
    out["sampled8_first_s"] = _timed(engine, sampled)
    out["sampled8_again_s"] = _timed(engine, sampled)
    out["grammar_first_s"] = _timed(engine, GenerationRequest(
        prompt=PROMPT, max_tokens=32, guided=grammar))
    out["grammar_again_s"] = _timed(engine, GenerationRequest(
        prompt=PROMPT, max_tokens=32, guided=grammar))
    out["new_tool_set_grammar_s"] = _timed(engine, GenerationRequest(
        prompt=PROMPT, max_tokens=32, guided=new_grammar))
    engine.shutdown()
    return out


def main() -> int:
    results = {"without_warm_up": measure(False), "with_warm_up": measure(True)}
    print(json.dumps(results, indent=2))
    if len(sys.argv) > 1:
        Path(sys.argv[1]).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
