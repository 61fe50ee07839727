"""What `TidalChatModel.invoke` costs per call on top of the engine, without vLLM.

The engine is the test suite's `FakeEngine`, which answers at once, so the time of
a call is the wrapper's own work: LangChain's entry point, the sync bridge, the
step pipeline (prepare, decide, execute, finish) and the reply. Two configurations:
"short", the one `bench strategies` times against a bare engine call (strategy
single, T=0, 8 tokens), and "adaptive", the default `TidalChatModel()`.

Usage: python scripts/measure_invoke_overhead.py [--calls 2000] [--rounds 3]
Prints the median wall time per call of each round, per configuration.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from langchain_core.messages import HumanMessage

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fakes import FakeEngine  # noqa: E402
from tidal_agents.chat_model import TidalChatModel  # noqa: E402
from tidal_agents.types import StrategyConfig  # noqa: E402

#: the question `bench strategies` times its short and normal calls on
QUESTION = "What is 17 + 25? Explain your reasoning step by step."
REPLY = "17 plus 25 is 42 because seven"
SHORT_TOKENS = 8


def chat_model(configuration: str) -> TidalChatModel:
    if configuration == "short":
        model = TidalChatModel(
            strategy=StrategyConfig("single", temperature=0.0, max_tokens=SHORT_TOKENS)
        )
    else:
        model = TidalChatModel()
    model._engine = FakeEngine(replies=(REPLY,))
    return model


def median_call_ms(model: TidalChatModel, calls: int) -> float:
    messages = [HumanMessage(QUESTION)]
    walls = []
    for _ in range(calls):
        t0 = time.perf_counter()
        model.invoke(messages)
        walls.append(time.perf_counter() - t0)
    return statistics.median(walls) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    for configuration in ("short", "adaptive"):
        model = chat_model(configuration)
        median_call_ms(model, 50)  # warm-up: first-call imports and caches
        rounds = [median_call_ms(model, args.calls) for _ in range(args.rounds)]
        shown = ", ".join(f"{ms:.3f}" for ms in rounds)
        print(f"{configuration}: median ms per call, per round: {shown}")


if __name__ == "__main__":
    main()
