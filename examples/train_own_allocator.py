"""Train the allocator on your own tasks, then let the chat model decide with it.

1. Your tasks as a JSONL file: a prompt (or messages) and the gold answer, with
   the tools and tool choice of steps with tools, as your agent binds them (here
   generated: word problems, steps that must call `multiply`, and the answers
   that must follow the tool's result).
2. Outcomes of every configuration on every step, through the chat model's own
   step path (what ``tidal-agents collect --tasks FILE`` runs).
3. A predictor trained on them (what ``tidal-agents train`` runs), saved to a file.
4. ``TidalChatModel(predictor_file=...)`` decides new steps with it; each trace
   record says ``predictor_kind`` "trained".

The model must be the one the outcomes were collected on (``--model DIR`` for
your own Hugging Face folder; the embedded SmolLM2-135M by default). The grid
the chat model chooses among is the set of configurations the collection
covered: ``--n-max 16`` covers the default grid. A CPU run is small on purpose
(~3 min with the defaults here); on a GPU, collect hundreds of tasks.

Run: python examples/train_own_allocator.py [--model DIR] [--tasks 12] [--n-max 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
from pathlib import Path
from typing import Any

from langchain_core.messages import HumanMessage
from langchain_core.tools import tool

from tidal_agents import TidalChatModel
from tidal_agents.allocation.grid import default_grid
from tidal_agents.engine import EngineConfig, get_engine
from tidal_agents.evaluation import collect, train
from tidal_agents.evaluation.step_tasks import file_steps
from tidal_agents.types import StrategyConfig

MULTIPLY_TOOL = {
    "type": "function",
    "function": {
        "name": "multiply",
        "description": "Multiply two numbers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
            "required": ["a", "b"],
        },
    },
}


@tool
def multiply(a: float, b: float) -> float:
    """Multiply two numbers."""
    return a * b


def write_tasks(path: Path, count: int, seed: int = 0) -> Path:
    """`count` tasks of three kinds of step: a word problem, a product that must be
    computed by calling `multiply`, and its answer once the tool has returned."""
    rng = random.Random(seed)
    lines: list[dict[str, Any]] = []
    for i in range(count):
        boxes, per_box = rng.randint(2, 9), rng.randint(2, 9)
        word_problem = (f"There are {boxes} boxes with {per_box} pens in each box. "
                        "How many pens in total?")
        a, b = rng.randint(11, 99), rng.randint(3, 19)
        question = f"What is {a} times {b}?"
        call = {"id": f"c{i}", "name": "multiply", "arguments": {"a": a, "b": b}}
        lines += [
            {"id": f"pens-{i}-text", "prompt": word_problem, "gold": boxes * per_box},
            {"id": f"product-{i}-call", "prompt": question, "tools": [MULTIPLY_TOOL],
             "tool_choice": "any", "gold": {"name": "multiply", "arguments": {"a": a, "b": b}}},
            {"id": f"product-{i}-answer", "tools": [MULTIPLY_TOOL], "tool_choice": "none",
             "gold": a * b, "messages": [
                 {"role": "user", "content": question},
                 {"role": "assistant", "content": "", "tool_calls": [call]},
                 {"role": "tool", "tool_call_id": f"c{i}", "content": str(float(a * b))},
             ]},
        ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


def covered_grid(coverage: dict[str, list[str]], max_tokens: int) -> tuple[StrategyConfig, ...]:
    """The default grid's configurations that the collection covered."""
    seen = {name for names in coverage.values() for name in names}
    return tuple(c for c in default_grid(max_tokens=max_tokens) if c.name in seen)


def run(model: str | None = None, tasks: int = 12, n_max: int = 4, max_tokens: int = 64,
        workdir: Path | None = None, deadline_s: float = 60.0) -> dict[str, Any]:
    workdir = workdir or Path(tempfile.mkdtemp(prefix="tidal-own-"))
    workdir.mkdir(parents=True, exist_ok=True)
    task_file = write_tasks(workdir / "tasks.jsonl", tasks)
    outcomes = workdir / "outcomes.jsonl"
    engine = get_engine(EngineConfig(model=model))
    settings = collect.CollectSettings(n_max=n_max, max_tokens=max_tokens, latency_items=1)
    asyncio.run(collect.collect(engine, file_steps(task_file), outcomes, settings, show=False))

    predictor, report = train.train(collect.read_rows(outcomes), estimator="logistic-per-kind")
    predictor_file = workdir / "predictor.joblib"
    predictor.save(predictor_file)

    chat = TidalChatModel(model_name=model, predictor_file=str(predictor_file),
                          max_tokens=max_tokens, grid=covered_grid(report["coverage"], max_tokens))
    question = "What is 47 times 12?"
    with chat.episode(deadline_s=deadline_s) as ep:
        reply = chat.invoke("There are 7 boxes with 6 pens in each box. How many pens in total?")
        call = chat.bind_tools([multiply], tool_choice="any").invoke(question)
        result = multiply.invoke(call.tool_calls[0]) if call.tool_calls else None
        answer = chat.bind_tools([multiply], tool_choice="none").invoke(
            [HumanMessage(question), call, result]) if result is not None else None
    return {"report": report, "predictor_file": predictor_file, "reply": reply, "call": call,
            "answer": answer, "trace": ep.trace}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="HF model folder (default: embedded)")
    p.add_argument("--tasks", type=int, default=12, help="tasks (3 steps each)")
    p.add_argument("--n-max", type=int, default=4,
                   help="samples per step; 16 covers the default grid")
    p.add_argument("--workdir", type=Path, default=None)
    args = p.parse_args()
    out = run(args.model, args.tasks, args.n_max, workdir=args.workdir)
    report = out["report"]
    print(f"trained on {report['train_queries']} steps, held out {report['test_queries']}: "
          f"Brier {report['brier_trained']:.3f} (per-configuration mean "
          f"{report['brier_per_config_mean']:.3f}); saved {out['predictor_file']}")
    print("reply:", out["reply"].content)
    print("call:", out["call"].tool_calls)
    print("answer:", out["answer"].content if out["answer"] is not None else None)
    out["trace"].print()
    for record in out["trace"]:
        print(f"step {record.step_index} ({record.features['answer_kind']}): decided by the "
              f"{record.decision['predictor_kind']} predictor")


if __name__ == "__main__":
    main()
