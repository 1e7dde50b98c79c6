"""The imitation model API (tests/provider.py) keeps its limits as documented.

The fleet benchmark and the model-call tests measure a client against this
provider, so its own counting must be exact first: per fixed window it admits
exactly ``rpm`` requests and exactly the tokens that fit, under a concurrent
flood; its 429s say when to come back; and the official ``openai`` SDK reads
its answers. Floods may straddle a window boundary, so every check is per
window, never a count over the whole flood.
"""

from __future__ import annotations

import asyncio
import re
from decimal import Decimal

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from provider import (
    KeyStats,
    ProviderConfig,
    RunningProvider,
    WindowStats,
    _Provider,
    duration,
    prompt_tokens,
    start_provider,
)

KEY = "fleet-key"
LONG_WINDOW = 3_600_000
"""An hour: a test's few requests all but always share one window. The flood
checks hold per window either way."""
DURATION = re.compile(r"^(\d+h)?(\d+m)?(\d+(\.\d+)?s)?$|^\d+ms$")
RATE_HEADERS = (
    "x-ratelimit-limit-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-requests",
    "x-ratelimit-reset-tokens",
)


def _messages(chars: int) -> list[ChatCompletionMessageParam]:
    return [{"role": "user", "content": "x" * chars}]


async def _flood(
    provider: RunningProvider, requests: int, chars: int, max_tokens: int, key: str = KEY
) -> list[httpx.Response]:
    body = {"model": "m", "messages": _messages(chars), "max_tokens": max_tokens}
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=provider.base_url, headers=headers) as client:
        return await asyncio.gather(
            *(client.post("/chat/completions", json=body) for _ in range(requests))
        )


def _draws(seed: int, max_tokens: int, count: int) -> list[int]:
    """The completions ``count`` admitted requests get, in order."""
    provider = _Provider(ProviderConfig(seed=seed, tpm=10**9, rpm=10**9))
    return [provider.admit(KEY, 10, max_tokens, now_ms=0) for _ in range(count)]


def _full_windows(stats: KeyStats, cause: str) -> list[WindowStats]:
    """Windows where some request was refused for ``cause``: they were full."""
    return [w for w in stats.windows.values() if getattr(w, f"rejected_{cause}") > 0]


# --------------------------------------------------------------------------
# Counting rules, without a server
# --------------------------------------------------------------------------


def test_prompt_tokens_follow_the_documented_formula() -> None:
    messages = [
        {"role": "system", "content": "x" * 41},
        {"role": "user", "content": [{"type": "text", "text": "y" * 8}, {"type": "text"}]},
        {"role": "assistant", "content": None},
    ]
    assert prompt_tokens(messages) == 3 + (4 + 10) + (4 + 2) + (4 + 0)


@pytest.mark.parametrize(
    ("ms", "text"),
    [(0, "0ms"), (20, "20ms"), (1000, "1s"), (1500, "1.5s"), (360_000, "6m0s"),
     (3_723_500, "1h2m3.5s"), (61_001, "1m1.001s")],
)  # fmt: skip
def test_durations_are_written_as_openai_writes_them(ms: int, text: str) -> None:
    assert duration(ms) == text


def test_completions_stay_within_max_tokens_and_half_exceed_three_quarters() -> None:
    completions = _draws(seed=7, max_tokens=400, count=2000)
    assert min(completions) >= 0
    assert max(completions) <= 400
    above = sum(c > 300 for c in completions)
    assert 0.47 < above / len(completions) < 0.53
    assert _draws(seed=7, max_tokens=0, count=10) == [0] * 10


def test_the_same_seed_draws_the_same_completions() -> None:
    assert _draws(seed=3, max_tokens=100, count=50) == _draws(seed=3, max_tokens=100, count=50)
    assert _draws(seed=3, max_tokens=100, count=50) != _draws(seed=4, max_tokens=100, count=50)


# --------------------------------------------------------------------------
# Limits under a concurrent flood
# --------------------------------------------------------------------------


async def test_a_flood_gets_exactly_rpm_answers_per_window(provider: RunningProvider) -> None:
    provider.reset(ProviderConfig(rpm=25, tpm=10**9, window_ms=LONG_WINDOW, latency_ms=5))
    replies = await _flood(provider, 120, chars=40, max_tokens=10)
    stats = provider.stats().key(KEY)
    full = _full_windows(stats, "requests")
    assert full, "the flood never filled a window"
    assert all(w.requests == 25 for w in full)
    assert all(w.requests <= 25 for w in stats.windows.values())
    admitted = sum(w.requests for w in stats.windows.values())
    assert sum(r.status_code == 200 for r in replies) == admitted
    assert sum(r.status_code == 429 for r in replies) == stats.rejected == 120 - admitted
    assert stats.received == 120


async def test_a_flood_gets_exactly_the_tokens_that_fit_per_window(
    provider: RunningProvider,
) -> None:
    # max_tokens 0: every answer costs its prompt alone, so a full window
    # holds exactly tpm // prompt requests.
    prompt = prompt_tokens(_messages(400))
    tpm = prompt * 12 + prompt // 2
    provider.reset(ProviderConfig(rpm=10**6, tpm=tpm, window_ms=LONG_WINDOW))
    replies = await _flood(provider, 80, chars=400, max_tokens=0)
    stats = provider.stats().key(KEY)
    full = _full_windows(stats, "tokens")
    assert full
    assert all(w.requests == 12 and w.tokens == 12 * prompt for w in full)
    assert all(w.tokens <= tpm for w in stats.windows.values())
    refusals = [r for r in replies if r.status_code == 429]
    assert len(refusals) == stats.rejected
    assert all(r.json()["error"]["type"] == "tokens" for r in refusals)


async def test_response_counting_stops_a_flood_within_one_completion_of_tpm(
    provider: RunningProvider,
) -> None:
    provider.reset(ProviderConfig(tpm=5_000, window_ms=LONG_WINDOW, latency_ms=5))
    prompt = prompt_tokens(_messages(400))
    replies = await _flood(provider, 60, chars=400, max_tokens=300)
    answered = [r.json()["usage"]["total_tokens"] for r in replies if r.status_code == 200]
    stats = provider.stats().key(KEY)
    full = _full_windows(stats, "tokens")
    assert full
    # Full: the next prompt no longer fit; and only the last admitted one's
    # completion can have gone past tpm.
    assert all(5_000 - prompt < w.tokens <= 5_000 + 300 for w in full)
    assert sum(w.tokens for w in stats.windows.values()) == sum(answered)
    assert sum(w.usage for w in stats.windows.values()) == sum(answered)
    assert stats.rejected == 60 - len(answered)


async def test_response_counting_admits_while_the_prompt_fits(
    provider: RunningProvider,
) -> None:
    # One at a time, so each answer's headers show what the next one meets.
    provider.reset(ProviderConfig(tpm=5_000, window_ms=LONG_WINDOW, latency_ms=0))
    prompt = prompt_tokens(_messages(400))
    answers: list[httpx.Response] = []
    while not answers or answers[-1].status_code == 200:
        (reply,) = await _flood(provider, 1, chars=400, max_tokens=300)
        answers.append(reply)
    *admitted, refused = answers
    remaining = [int(r.headers["x-ratelimit-remaining-tokens"]) for r in answers]
    assert all(left >= prompt for left in remaining[:-2])
    assert remaining[-2] < prompt
    assert remaining[-1] < prompt
    assert refused.json()["error"]["type"] == "tokens"
    (window,) = provider.stats().key(KEY).windows.values()
    assert window.tokens == sum(r.json()["usage"]["total_tokens"] for r in admitted)


async def test_request_counting_charges_max_tokens_on_arrival() -> None:
    prompt = prompt_tokens(_messages(400))
    cost = prompt + 300
    config = ProviderConfig(
        counting="request", tpm=cost * 7 + 1, rpm=10**6, window_ms=LONG_WINDOW, latency_ms=0
    )
    # Started with these settings on its command line, not reset to them.
    with start_provider(config) as provider:
        assert provider.stats().config == config
        replies = await _flood(provider, 40, chars=400, max_tokens=300)
        stats = provider.stats().key(KEY)
    full = _full_windows(stats, "tokens")
    assert full
    assert all(w.requests == 7 and w.tokens == 7 * cost for w in full)
    answered = [r.json()["usage"] for r in replies if r.status_code == 200]
    # What the answers used is below what was counted, and counts nothing more.
    assert sum(u["total_tokens"] for u in answered) < sum(w.tokens for w in full)
    assert all(u["completion_tokens"] <= 300 for u in answered)


# --------------------------------------------------------------------------
# What every response says
# --------------------------------------------------------------------------


async def test_a_refusal_says_when_to_retry_and_where_the_limits_stand(
    provider: RunningProvider,
) -> None:
    provider.reset(ProviderConfig(rpm=2, window_ms=LONG_WINDOW))
    replies = await _flood(provider, 6, chars=40, max_tokens=10)
    refusals = [r for r in replies if r.status_code == 429]
    assert refusals
    for reply in refusals:
        assert 1 <= int(reply.headers["retry-after"]) <= LONG_WINDOW // 1000
        assert 0 < int(reply.headers["retry-after-ms"]) <= LONG_WINDOW
        assert int(reply.headers["retry-after"]) * 1000 >= int(reply.headers["retry-after-ms"])
        assert reply.headers["x-ratelimit-remaining-requests"] == "0"
        assert reply.json()["error"]["code"] == "rate_limit_exceeded"
    for reply in replies:
        assert all(name in reply.headers for name in RATE_HEADERS)
        assert reply.headers["x-ratelimit-limit-requests"] == "2"
        assert DURATION.match(reply.headers["x-ratelimit-reset-tokens"])


async def test_the_other_consumer_shows_only_in_remaining_tokens(
    provider: RunningProvider,
) -> None:
    provider.reset(
        ProviderConfig(tpm=1_000, other_share=Decimal("0.3"), window_ms=LONG_WINDOW, latency_ms=0)
    )
    (reply,) = await _flood(provider, 1, chars=40, max_tokens=50)
    total = reply.json()["usage"]["total_tokens"]
    assert int(reply.headers["x-ratelimit-remaining-tokens"]) == 1_000 - 300 - total
    assert reply.headers["x-ratelimit-limit-tokens"] == "1000"
    (window,) = provider.stats().key(KEY).windows.values()
    assert (window.tokens, window.other) == (total, 300)


async def test_each_key_has_limits_of_its_own(provider: RunningProvider) -> None:
    provider.reset(ProviderConfig(rpm=3, window_ms=LONG_WINDOW))
    await _flood(provider, 5, chars=40, max_tokens=10, key="a")
    replies = await _flood(provider, 3, chars=40, max_tokens=10, key="b")
    assert [r.status_code for r in replies] == [200, 200, 200]


async def test_a_request_without_a_key_or_messages_is_refused_as_openai_does(
    provider: RunningProvider,
) -> None:
    async with httpx.AsyncClient(base_url=provider.base_url) as client:
        anonymous = await client.post("/chat/completions", json={"messages": _messages(4)})
        empty = await client.post(
            "/chat/completions", json={"messages": []}, headers={"Authorization": "Bearer k"}
        )
    assert anonymous.status_code == 401
    assert empty.status_code == 400
    assert provider.stats().keys == {}


# --------------------------------------------------------------------------
# The official SDK
# --------------------------------------------------------------------------


async def test_the_openai_sdk_reads_answers_usage_and_headers(provider: RunningProvider) -> None:
    provider.reset(ProviderConfig(rpm=1, window_ms=LONG_WINDOW))
    messages = _messages(123)
    client = openai.AsyncOpenAI(base_url=provider.base_url, api_key=KEY, max_retries=0)
    async with client:
        raw = await client.chat.completions.with_raw_response.create(
            model="m", messages=messages, max_tokens=64
        )
        completion = raw.parse()
        with pytest.raises(openai.RateLimitError) as refused:
            await client.chat.completions.create(model="m", messages=messages, max_tokens=64)
    usage = completion.usage
    assert usage is not None
    assert usage.prompt_tokens == prompt_tokens(messages)
    assert 0 <= usage.completion_tokens <= 64
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert raw.headers["x-ratelimit-remaining-requests"] == "0"
    assert int(raw.headers["x-ratelimit-remaining-tokens"]) == 60_000 - usage.total_tokens
    assert int(refused.value.response.headers["retry-after"]) >= 1


async def test_the_openai_sdk_reads_a_streamed_answer_and_its_last_usage_chunk(
    provider: RunningProvider,
) -> None:
    # One window for both requests, so its count is theirs: a 2 s window
    # could turn between them on a loaded machine.
    provider.reset(ProviderConfig(window_ms=LONG_WINDOW))
    messages = _messages(200)
    client = openai.AsyncOpenAI(base_url=provider.base_url, api_key=KEY, max_retries=0)
    async with client:
        raw = await client.chat.completions.with_raw_response.create(
            model="m",
            messages=messages,
            max_tokens=64,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in raw.parse()]
        plain = await client.chat.completions.create(
            model="m", messages=messages, max_tokens=64, stream=True
        )
        unasked = [chunk async for chunk in plain]
    *content, last = chunks
    assert last.usage is not None
    assert last.choices == []
    assert all(chunk.usage is None for chunk in content)
    assert last.usage.prompt_tokens == prompt_tokens(messages)
    text = "".join(c.choices[0].delta.content or "" for c in content)
    assert text == f"{last.usage.completion_tokens} tokens"
    assert all(chunk.usage is None for chunk in unasked)
    assert int(raw.headers["x-ratelimit-remaining-requests"]) == 399
    (window,) = provider.stats().key(KEY).windows.values()
    assert window.requests == 2
