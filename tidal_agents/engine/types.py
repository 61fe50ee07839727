"""Typed, validated requests and results of the engine layer.

Every strategy talks to an engine only through these objects, so the in-process
engine and a remote `vllm serve` are interchangeable.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from tidal_agents.errors import TidalConfigError
from tidal_agents.validation import check_bool, check_int, check_number, check_stop, is_int

FinishReason = Literal["stop", "length", "abort", "timeout"]
#: ``on_token(sample_index, text_delta)``, called as text arrives
TokenCallback = Callable[[int, str], None]

#: vLLM's default ``max_logprobs``: the most top-k log-probs one token may carry.
MAX_TOP_LOGPROBS = 20


@dataclass(frozen=True)
class GuidedDecoding:
    """Grammar-constrained output: exactly one of a JSON schema, a regex or a choice."""

    json_schema: dict[str, Any] | None = None
    regex: str | None = None
    choice: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        given = [n for n in ("json_schema", "regex", "choice") if getattr(self, n) is not None]
        if len(given) != 1:
            raise TidalConfigError(
                "GuidedDecoding needs exactly one of json_schema, regex, choice; "
                f"got {given or 'none'}."
            )
        if self.json_schema is not None:
            check_json_schema(self.json_schema)
        if self.regex is not None:
            if not isinstance(self.regex, str) or not self.regex:
                raise TidalConfigError(
                    f"GuidedDecoding.regex={self.regex!r}: pass a non-empty pattern string."
                )
            try:
                re.compile(self.regex)
            except (re.error, RecursionError, OverflowError) as exc:
                raise TidalConfigError(
                    f"GuidedDecoding.regex={self.regex!r} is not a valid regular expression: "
                    f"{exc}."
                ) from exc
        if self.choice is not None:
            if not isinstance(self.choice, (tuple, list)) or not self.choice or not all(
                isinstance(c, str) and c for c in self.choice
            ):
                raise TidalConfigError(
                    f"GuidedDecoding.choice={self.choice!r}: pass a non-empty tuple of "
                    "non-empty strings."
                )
            object.__setattr__(self, "choice", tuple(self.choice))


def check_json_schema(schema: Any) -> None:
    """Raise TidalConfigError unless `schema` is a valid JSON Schema object."""
    import jsonschema

    if not isinstance(schema, dict):
        raise TidalConfigError(
            f"JSON schema must be a dict (a JSON object), got {type(schema).__name__}."
        )
    try:
        # JSON proper: no NaN / Infinity, no lone surrogates (the grammar compiler
        # and the tokenizer take UTF-8), and string keys only (json.dumps would
        # silently turn {1: ...} into {"1": ...}: a different schema).
        text = json.dumps(schema, allow_nan=False, ensure_ascii=False)
        text.encode("utf-8")
        _check_keys(schema)
        jsonschema.Draft202012Validator.check_schema(schema)
        _check_local_refs(schema)
    except UnicodeEncodeError as exc:
        raise TidalConfigError(
            f"JSON schema contains a lone UTF-16 surrogate {exc.object[exc.start]!r}, which "
            "is not valid Unicode; allowed is valid UTF-8 text."
        ) from exc
    except RecursionError as exc:
        raise TidalConfigError(
            "JSON schema is nested too deeply to check; allowed is a schema that nests "
            "less than a few hundred levels."
        ) from exc
    except (TypeError, ValueError) as exc:
        raise TidalConfigError(
            f"JSON schema is not JSON-serialisable: {exc}; allowed are dicts with string "
            "keys, lists, strings, finite numbers, booleans and None."
        ) from exc
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.path)
        raise TidalConfigError(
            f"Malformed JSON schema{f' at {where!r}' if where else ''}: {exc.message}"
        ) from exc


def _check_local_refs(schema: dict[str, Any]) -> None:
    """Raise TidalConfigError on a ``$ref`` that is not local (nothing is fetched:
    a URL or file ref cannot be resolved) or a local one ('#/...') that points
    nowhere: the grammar compiler would only find out inside the engine, mid-step."""
    stack: list[Any] = [schema]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            ref = item.get("$ref")
            if isinstance(ref, str) and not ref.startswith("#"):
                raise TidalConfigError(
                    f"JSON schema $ref {ref!r} is not local: schemas are never fetched; "
                    "allowed are local refs to definitions in the schema ('#/$defs/...')."
                )
            if isinstance(ref, str) and ref.startswith("#/"):
                target: Any = schema
                for part in ref[2:].split("/"):
                    part = part.replace("~1", "/").replace("~0", "~")
                    if isinstance(target, dict) and part in target:
                        target = target[part]
                    elif isinstance(target, list) and part.isdigit() and int(part) < len(target):
                        target = target[int(part)]
                    else:
                        raise TidalConfigError(
                            f"JSON schema $ref {ref!r} points to nothing in the schema; "
                            "allowed are local refs to existing definitions ('#/$defs/...')."
                        )
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _check_keys(value: Any) -> None:
    """Raise TypeError on a non-string dict key anywhere in `value`."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            bad = [k for k in item if not isinstance(k, str)]
            if bad:
                raise TypeError(f"keys must be strings, got {bad[0]!r}")
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt, n samples. Defaults match vLLM's SamplingParams where they overlap.

    Attributes:
        prompt: the fully formatted prompt text (chat template already applied),
            or its token ids.
        n: samples generated in one engine request (they share the prompt's KV cache).
        temperature: 0 means greedy.
        top_p: nucleus mass in (0, 1].
        seed: per-request seed (unsafe with chunked prefill on CPU, so the local
            engine disables chunked prefill there; see docs/design-notes.md,
            'Chunked prefill and seeds').
        max_tokens: new tokens per sample, at least 1.
        stop: stop strings (not included in the output).
        logprobs: None for none; k >= 0 returns the sampled token's log-prob plus
            the top-k alternatives per position.
        guided: grammar constraint, or None.
        timeout_s: wall-clock limit; on expiry the request is aborted inside vLLM
            and what was generated so far is returned with finish reason "timeout".
        priority: vLLM scheduling priority (lower runs first; needs priority scheduling).
        ignore_eos: keep generating past EOS (benchmarks).
    """

    prompt: str | tuple[int, ...]
    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    logprobs: int | None = None
    guided: GuidedDecoding | None = None
    timeout_s: float | None = None
    priority: int = 0
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompt", _checked_prompt(self.prompt))
        check_int("n", self.n, 1, 1024)
        check_int("max_tokens", self.max_tokens, 1, 10**7)
        check_number("temperature", self.temperature, lo=0)
        check_number("top_p", self.top_p, lo=0, hi=1, lo_open=True)
        check_int("logprobs", self.logprobs, 0, MAX_TOP_LOGPROBS, allow_none=True)
        check_int("seed", self.seed, 0, 2**63 - 1, allow_none=True)
        object.__setattr__(self, "stop", check_stop(self.stop))
        check_number("timeout_s", self.timeout_s, lo=0, lo_open=True, allow_none=True)
        check_int("priority", self.priority, -(2**31), 2**31 - 1)
        check_bool("ignore_eos", self.ignore_eos)
        if self.guided is not None and not isinstance(self.guided, GuidedDecoding):
            raise TidalConfigError(
                f"guided={self.guided!r}: allowed is None or a GuidedDecoding."
            )


def _checked_prompt(prompt: Any) -> str | tuple[int, ...]:
    """The prompt as text or a tuple of token ids; TidalConfigError if it is neither
    or is empty."""
    if isinstance(prompt, str):
        if not prompt:
            raise TidalConfigError("prompt is empty; pass at least one character or token.")
        return prompt
    if isinstance(prompt, (tuple, list)):
        if not prompt or not all(is_int(t) and t >= 0 for t in prompt):
            raise TidalConfigError("prompt token ids must be a non-empty sequence of ints >= 0.")
        return tuple(prompt)
    raise TidalConfigError(
        f"prompt must be str or a sequence of token ids, got {type(prompt).__name__}."
    )


@dataclass(frozen=True)
class Sample:
    """One generated sequence."""

    index: int
    text: str
    token_ids: tuple[int, ...]
    finish_reason: FinishReason
    #: log-prob of each sampled token (empty unless logprobs were requested)
    logprobs: tuple[float, ...] = ()
    #: per position, the top-k alternatives as {token_id: logprob}
    top_logprobs: tuple[dict[int, float], ...] = ()

    @property
    def mean_logprob(self) -> float | None:
        return sum(self.logprobs) / len(self.logprobs) if self.logprobs else None


@dataclass(frozen=True)
class GenerationResult:
    """Everything one engine request produced and spent."""

    samples: tuple[Sample, ...]
    prompt_tokens: int
    cached_prompt_tokens: int
    generated_tokens: int
    wall_s: float
    #: True when the request was aborted by its timeout (samples are partial)
    timed_out: bool = False
    request_id: str = ""
    #: seconds from submission to the first generated token
    first_token_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Engine(Protocol):
    """What strategies and the chat model need from a backend."""

    @property
    def model_name(self) -> str: ...

    @property
    def max_model_len(self) -> int: ...

    @property
    def backend_id(self) -> str:
        """Identifies model + engine + machine, used to key calibrations."""
        ...

    @property
    def tokenizer(self) -> Any:
        """The model's Hugging Face tokenizer (chat template, token counts)."""
        ...

    def start(self) -> Engine:
        """Start the backend if it is not running yet (idempotent); returns self."""
        ...

    async def generate(
        self,
        request: GenerationRequest,
        on_token: TokenCallback | None = None,
    ) -> GenerationResult:
        """`on_token(sample_index, text_delta)` is called as text arrives."""
        ...

    def apply_chat_template(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> str: ...

    def count_tokens(self, text: str) -> int: ...

    @property
    def in_flight_sequences(self) -> int:
        """Sequences being generated for other requests right now (the engine's load)."""
        ...

    @property
    def queued_prompt_tokens(self) -> int:
        """Prompt tokens of requests waiting to be prefilled (0 where unknown)."""
        ...

    @property
    def seconds_since_output(self) -> float:
        """Seconds since the engine last produced output for any request (inf before
        the first)."""
        ...


def check_prompt_ids(ids: list[int], max_tokens: int, max_model_len: int, vocab: int) -> None:
    """Raise TidalConfigError unless the prompt fits the model's context and vocabulary."""
    if not ids:
        raise TidalConfigError("prompt encodes to zero tokens; pass a non-empty prompt.")
    if max_model_len and len(ids) + max_tokens > max_model_len:
        raise TidalConfigError(
            f"prompt ({len(ids)} tokens) + max_tokens ({max_tokens}) exceeds the "
            f"model's context of {max_model_len} tokens; shorten the conversation "
            "or lower max_tokens."
        )
    bad = [t for t in ids if t >= vocab]
    if bad:
        raise TidalConfigError(
            f"prompt token ids {bad[:5]} are outside the vocabulary [0, {vocab})."
        )
