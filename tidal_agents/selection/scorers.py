"""Pluggable scorers: rate candidate texts for best-of-N selection or beam pruning.

A `Scorer` is anything with ``score(prompt, texts) -> list[float]`` (higher is
better, one score per text). `VLLMPoolingScorer` is the real one: an outcome or
process reward model served by vLLM's pooling runner, as in the paper we build
on (Qwen2.5-Math-PRM-7B guided its beam search). It loads its own `vllm.LLM`,
so it needs memory for a second model; no CPU test loads one. The default in
every strategy needs no scorer: votes and mean token log-probs.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from typing import Any, Literal, Protocol, runtime_checkable

from tidal_agents.errors import TidalConfigError, TidalEngineError


@runtime_checkable
class Scorer(Protocol):
    def score(self, prompt: str, texts: Sequence[str]) -> list[float]:
        """One score per text (higher is better) for `prompt` continued by each text."""
        ...


PoolingMode = Literal["classify", "token_classify"]


class VLLMPoolingScorer:
    """Reward-model scorer on vLLM's pooling API (``LLM(runner="pooling")``).

    Args:
        model: a local path or name of a sequence-classification reward model
            (``mode="classify"``, e.g. an outcome RM with a "correct" class) or a
            process reward model with per-token labels (``mode="token_classify"``,
            e.g. Qwen2.5-Math-PRM).
        mode: ``classify`` scores a whole text with ``LLM.classify``;
            ``token_classify`` runs ``LLM.encode(pooling_task="token_classify")``
            and reads the label at the last token, the PRM's verdict on the
            latest step.
        positive_label: index of the "good" class in the model's output.
        template: how prompt and text are joined into the scored input.
        llm_kwargs: passed to ``vllm.LLM`` (dtype, max_model_len, ...).

    The model loads on the first `score` call. Calls are serialised: one
    `vllm.LLM` is not safe to drive from several threads at once.
    """

    def __init__(
        self,
        model: str,
        mode: PoolingMode = "classify",
        positive_label: int = -1,
        template: str = "{prompt}{text}",
        **llm_kwargs: Any,
    ) -> None:
        if mode not in ("classify", "token_classify"):
            raise TidalConfigError(f"mode={mode!r}: allowed are classify, token_classify.")
        if not isinstance(model, str) or not model:
            raise TidalConfigError(f"model={model!r}: pass a model path or name.")
        if "{text}" not in template:
            raise TidalConfigError(f"template={template!r} must contain '{{text}}'.")
        self.model = model
        self.mode: PoolingMode = mode
        self.positive_label = positive_label
        self.template = template
        self.llm_kwargs = llm_kwargs
        self._llm: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        if self._llm is None:
            from vllm import LLM

            try:
                self._llm = LLM(model=self.model, runner="pooling", **self.llm_kwargs)
            except Exception as exc:
                raise TidalEngineError(
                    f"vLLM could not load reward model {self.model!r} with the pooling "
                    f"runner: {type(exc).__name__}: {exc}"
                ) from exc
        return self._llm

    def score(self, prompt: str, texts: Sequence[str]) -> list[float]:
        if not texts:
            return []
        inputs = [self.template.format(prompt=prompt, text=t) for t in texts]
        with self._lock:
            llm = self._load()
            if self.mode == "classify":
                outs = llm.classify(inputs, use_tqdm=False)
                rows = [list(o.outputs.probs) for o in outs]
            else:
                outs = llm.encode(inputs, pooling_task="token_classify", use_tqdm=False)
                # data: [tokens, labels]; the last token carries the verdict so far
                rows = [o.outputs.data[-1].float().tolist() for o in outs]
        scores = []
        for row in rows:
            try:
                value = float(row[self.positive_label])
            except IndexError as exc:
                raise TidalConfigError(
                    f"positive_label={self.positive_label} is out of range for a model "
                    f"with {len(row)} labels."
                ) from exc
            scores.append(value if math.isfinite(value) else -math.inf)
        return scores
