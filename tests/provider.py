"""A small local imitation of a model API that enforces its own rate limits.

It answers OpenAI's ``POST /v1/chat/completions`` well enough for the
official ``openai`` SDK to parse, whole or streamed (``stream: true``, with a
last chunk of usage when ``stream_options.include_usage`` is set; the chunks
all arrive together after the latency), and limits each API key (the
``Authorization: Bearer <key>`` header) to ``rpm`` requests and ``tpm``
tokens per fixed window of ``window_ms`` milliseconds aligned to the Unix
epoch, as a real provider does per minute. Tests and bench/llm_fleet.py use
it to see what a fleet of clients does to a provider's limits, with no
network and no real model.

Token counting, exact so that a client can estimate it:

- prompt tokens: :func:`prompt_tokens`, ``3 + Σ (4 + len(text) // 4)`` over
  the messages, where ``text`` is a message's content (the concatenated
  ``text`` parts when the content is a list of parts);
- completion tokens: ``round(max_tokens * u ** (log ¾ / log ½))`` for ``u``
  uniform on [0, 1) from a seeded generator: within ``[0, max_tokens]``, with
  median exactly ¾ ``max_tokens`` and mean about 0.71 ``max_tokens``, so an
  estimate of ``prompt + ¾ max_tokens`` is exceeded by about half of the
  calls, and one of ``prompt + max_tokens`` by none.

Admission, per key and window, in one of two counting modes:

- ``"response"`` (default): a request is admitted when the window has admitted
  fewer than ``rpm`` requests and its remaining tokens are at least the
  request's prompt tokens. What it then uses, prompt plus completion, is
  counted at once against the window it arrived in: the imitation draws the
  completion as it admits, so no answer in flight is missing from the count
  when the next request arrives. The last request a window admits may take
  it past ``tpm`` by up to its completion, never by more, as with providers
  that count the output they produced.
- ``"request"``: as OpenAI documents, ``prompt + max_tokens`` is counted on
  arrival and a request is admitted only if that fits in the remaining
  tokens (and under ``rpm``); what the answer then uses changes nothing.

A refused request counts nothing and gets 429 with ``Retry-After`` (whole
seconds, rounded up), ``retry-after-ms`` (which the SDK prefers), both until
the window ends, and an OpenAI-style error body. Every response, 200 or 429,
carries ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` for the
window current when it is sent, durations in OpenAI's format (``6m0s``,
``1.5s``, ``20ms``).

Another consumer of the same key, which a fleet of clients cannot see, takes
``other_share`` of each window's ``tpm`` as the window opens (the first time
the provider touches that window for that key): it shows only in the
remaining-tokens header, never in the fleet's own counts.

``GET /stats`` reports, per key, the requests received, the 429s, and per
window (keyed by its start in epoch milliseconds) the requests admitted, the
key's own tokens counted, the other consumer's tokens, the usage that the
answers to its admitted requests report, and the 429s by cause.
``POST /reset`` forgets all of it; a JSON object in its body changes the
configuration from then on.

State lives in this one process (run it under a single uvicorn worker). Each
check-and-count is plain synchronous code with no ``await`` inside, so on the
event loop it is atomic without a lock.

    python tests/provider.py --port 8000 --rpm 400 --tpm 60000 --window-ms 2000

:func:`start_provider` runs it in a subprocess on a free loopback port and
waits until it answers; it has no pytest dependency, so bench/ uses it too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import random
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import httpx

__all__ = [
    "KeyStats",
    "ProviderConfig",
    "ProviderStats",
    "RunningProvider",
    "WindowStats",
    "duration",
    "prompt_tokens",
    "start_provider",
]

HOST = "127.0.0.1"
Counting = Literal["response", "request"]
COUNTINGS: tuple[Counting, ...] = ("response", "request")

_PROMPT_PRIMING = 3
"""Tokens every prompt costs on top of its messages (the reply's priming)."""
_PER_MESSAGE = 4
"""Tokens each message costs on top of its text (role and separators)."""
_CHARS_PER_TOKEN = 4
_SHAPE = math.log(0.75) / math.log(0.5)
"""``u ** _SHAPE`` has its median at ¾: ``0.5 ** _SHAPE == 0.75``."""
_STARTUP_TIMEOUT = 15.0
_STOP_TIMEOUT = 5.0
_PORT_ATTEMPTS = 5


# --------------------------------------------------------------------------
# What clients can compute exactly
# --------------------------------------------------------------------------


def _text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    if content is None:
        return ""
    raise ValueError("a message's content must be a string, a list of parts, or null")


def prompt_tokens(messages: object) -> int:
    """The prompt tokens the provider counts for ``messages``: exact, not an estimate."""
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty list")
    total = _PROMPT_PRIMING
    for message in messages:
        if not isinstance(message, dict):
            raise ValueError("each message must be an object")
        total += _PER_MESSAGE + len(_text(message.get("content"))) // _CHARS_PER_TOKEN
    return total


def duration(ms: int) -> str:
    """A duration in OpenAI's header format (Go's): ``20ms``, ``1.5s``, ``6m0s``, ``1h0m0s``."""
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds = f"{Decimal(rest) / 1000:f}".rstrip("0").rstrip(".") if rest else "0"
    if hours:
        return f"{hours}h{minutes}m{seconds}s"
    if minutes:
        return f"{minutes}m{seconds}s"
    return f"{seconds}s"


# --------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class ProviderConfig:
    """How the imitation provider limits, counts and answers."""

    rpm: int = 400
    """Requests admitted per key per window."""
    tpm: int = 60_000
    """Tokens counted per key per window, the other consumer's included."""
    window_ms: int = 2_000
    """Window length; windows are aligned to the Unix epoch."""
    latency_ms: int = 30
    """How long the model takes to answer an admitted request."""
    counting: Counting = "response"
    """When tokens are counted; see the module docstring."""
    other_share: Decimal = Decimal(0)
    """Share of each window's ``tpm`` another consumer of the key takes as it opens."""
    seed: int = 0
    """Seed of the completion-token draws."""
    default_max_tokens: int = 256
    """``max_tokens`` of a request that gives none."""

    def __post_init__(self) -> None:
        if min(self.rpm, self.tpm, self.window_ms) <= 0:
            raise ValueError("rpm, tpm and window_ms must be positive")
        if min(self.latency_ms, self.default_max_tokens) < 0:
            raise ValueError("latency_ms and default_max_tokens must not be negative")
        if self.counting not in COUNTINGS:
            raise ValueError(f"counting must be one of {COUNTINGS}")
        if not 0 <= self.other_share < 1:
            raise ValueError("other_share must be at least 0 and below 1")

    @property
    def other_tokens(self) -> int:
        """Tokens the other consumer takes from each window, rounded down."""
        return int(self.tpm * self.other_share)

    def as_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["other_share"] = str(self.other_share)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any], base: ProviderConfig | None = None) -> ProviderConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown settings: {sorted(unknown)}")
        changes = dict(data)
        if "other_share" in changes:
            changes["other_share"] = Decimal(str(changes["other_share"]))
        return dataclasses.replace(base or cls(), **changes)

    def argv(self) -> list[str]:
        """Command-line arguments that give this configuration."""
        args: list[str] = []
        for name, value in self.as_json().items():
            args += [f"--{name.replace('_', '-')}", str(value)]
        return args


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default=HOST)
    parser.add_argument("--port", type=int, required=True)
    defaults = ProviderConfig()
    for f in dataclasses.fields(ProviderConfig):
        default = getattr(defaults, f.name)
        kind: Any = type(default)
        choices = COUNTINGS if f.name == "counting" else None
        parser.add_argument(
            f"--{f.name.replace('_', '-')}", type=kind, default=default, choices=choices
        )
    return parser


# --------------------------------------------------------------------------
# State
# --------------------------------------------------------------------------


@dataclass
class WindowStats:
    """One key's counts in one window."""

    requests: int = 0
    """Requests admitted (arrived in this window)."""
    tokens: int = 0
    """The key's own tokens counted against ``tpm`` in this window."""
    other: int = 0
    """Tokens the other consumer took as the window opened."""
    usage: int = 0
    """``total_tokens`` the answers to the requests admitted here report."""
    rejected_requests: int = 0
    """429s because the window had admitted ``rpm`` requests."""
    rejected_tokens: int = 0
    """429s because the request's tokens did not fit."""

    @property
    def used(self) -> int:
        return self.tokens + self.other


@dataclass
class KeyStats:
    """One key's counts since the last reset."""

    received: int = 0
    rejected: int = 0
    windows: dict[int, WindowStats] = field(default_factory=dict)
    """Per window, by its start in epoch milliseconds."""

    def as_json(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "rejected": self.rejected,
            "windows": {
                str(start): dataclasses.asdict(window) for start, window in self.windows.items()
            },
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> KeyStats:
        windows = {int(start): WindowStats(**w) for start, w in data["windows"].items()}
        return cls(data["received"], data["rejected"], dict(sorted(windows.items())))


@dataclass(frozen=True)
class ProviderStats:
    """What ``GET /stats`` reports."""

    config: ProviderConfig
    keys: dict[str, KeyStats]

    def key(self, name: str) -> KeyStats:
        return self.keys.get(name, KeyStats())


class _Refused(Exception):
    def __init__(self, cause: Literal["requests", "tokens"], requested: int) -> None:
        self.cause = cause
        self.requested = requested


class _Provider:
    def __init__(self, config: ProviderConfig) -> None:
        self.reset(config)

    def reset(self, config: ProviderConfig) -> None:
        self.config = config
        self.keys: dict[str, KeyStats] = {}
        self.rng = random.Random(config.seed)
        self.served = 0

    def window(self, key: str, now_ms: int) -> tuple[int, WindowStats]:
        stats = self.keys.setdefault(key, KeyStats())
        start = now_ms // self.config.window_ms * self.config.window_ms
        window = stats.windows.get(start)
        if window is None:
            window = stats.windows[start] = WindowStats(other=self.config.other_tokens)
        return start, window

    def admit(self, key: str, prompt: int, max_tokens: int, now_ms: int) -> int:
        """Count an arriving request, or raise _Refused; return its completion tokens."""
        config = self.config
        self.keys.setdefault(key, KeyStats()).received += 1
        _, window = self.window(key, now_ms)
        needed = prompt + max_tokens if config.counting == "request" else prompt
        if window.requests >= config.rpm:
            window.rejected_requests += 1
            self.keys[key].rejected += 1
            raise _Refused("requests", 1)
        if window.used + needed > config.tpm:
            window.rejected_tokens += 1
            self.keys[key].rejected += 1
            raise _Refused("tokens", needed)
        # Drawn only for an admitted request, so a seed gives the same
        # completions to the same admitted sequence, whatever was refused.
        share: float = self.rng.random() ** _SHAPE
        completion = round(max_tokens * share)
        window.requests += 1
        window.usage += prompt + completion
        window.tokens += needed if config.counting == "request" else prompt + completion
        return completion

    def headers(self, key: str, now_ms: int) -> dict[str, str]:
        config = self.config
        start, window = self.window(key, now_ms)
        reset = duration(start + config.window_ms - now_ms)
        return {
            "x-ratelimit-limit-requests": str(config.rpm),
            "x-ratelimit-limit-tokens": str(config.tpm),
            "x-ratelimit-remaining-requests": str(max(0, config.rpm - window.requests)),
            "x-ratelimit-remaining-tokens": str(max(0, config.tpm - window.used)),
            "x-ratelimit-reset-requests": reset,
            "x-ratelimit-reset-tokens": reset,
        }

    def stats(self) -> dict[str, Any]:
        return {
            "config": self.config.as_json(),
            "keys": {key: stats.as_json() for key, stats in self.keys.items()},
        }


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


# --------------------------------------------------------------------------
# The ASGI application
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Answer:
    id: str
    created: int
    model: str
    prompt: int
    completion: int

    def _head(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def _usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt,
            "completion_tokens": self.completion,
            "total_tokens": self.prompt + self.completion,
        }

    def whole(self, max_tokens: int) -> dict[str, Any]:
        """A ``chat.completion`` object."""
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": f"{self.completion} tokens"},
            "logprobs": None,
            "finish_reason": "length" if self.completion == max_tokens else "stop",
        }
        return {**self._head("chat.completion"), "choices": [choice], "usage": self._usage()}

    def events(self, *, include_usage: bool) -> str:
        """The same answer as server-sent ``chat.completion.chunk`` events.

        As OpenAI streams: usage only when asked for, in a last chunk with no
        choices, and ``null`` in every chunk before it.
        """
        deltas: list[tuple[dict[str, str], str | None]] = [
            ({"role": "assistant", "content": ""}, None),
            ({"content": f"{self.completion} tokens"}, None),
            ({}, "stop"),
        ]
        chunks: list[dict[str, Any]] = []
        for delta, finish in deltas:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            chunks.append({**self._head("chat.completion.chunk"), "choices": [choice]})
        if include_usage:
            for chunk in chunks:
                chunk["usage"] = None
            chunks.append(
                {**self._head("chat.completion.chunk"), "choices": [], "usage": self._usage()}
            )
        lines = [f"data: {json.dumps(chunk)}\n\n" for chunk in chunks]
        return "".join([*lines, "data: [DONE]\n\n"])


def _error(status: int, message: str, kind: str, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def create_app(config: ProviderConfig) -> Any:
    """The Starlette application, with its state in ``app.state.provider``."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    provider = _Provider(config)

    def bad(message: str, status: int = 400, kind: str = "invalid_request_error") -> Response:
        return JSONResponse(_error(status, message, kind, None), status_code=status)

    async def chat_completions(request: Request) -> Response:
        auth = request.headers.get("authorization", "")
        key = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else ""
        if not key:
            return bad("no API key: send 'Authorization: Bearer <key>'", 401, "authentication")
        try:
            body = json.loads(await request.body())
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
            prompt = prompt_tokens(body.get("messages"))
            max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
            if max_tokens is None:
                max_tokens = provider.config.default_max_tokens
            if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 0:
                raise ValueError("'max_tokens' must be a non-negative integer")
            stream = body.get("stream") is True
            options = body.get("stream_options") or {}
            if not isinstance(options, dict):
                raise ValueError("'stream_options' must be an object")
        except ValueError as err:  # json.JSONDecodeError is a ValueError
            return bad(str(err))
        model = str(body.get("model", "imitation"))
        try:
            completion = provider.admit(key, prompt, max_tokens, _now_ms())
        except _Refused as refused:
            return _refusal(provider, key, model, refused)
        await asyncio.sleep(provider.config.latency_ms / 1000)
        now = _now_ms()
        provider.served += 1
        answer = _Answer(f"chatcmpl-{provider.served}", now // 1000, model, prompt, completion)
        headers = provider.headers(key, now)
        if stream:
            events = answer.events(include_usage=options.get("include_usage") is True)
            return Response(events, media_type="text/event-stream", headers=headers)
        return JSONResponse(answer.whole(max_tokens), headers=headers)

    def _refusal(provider: _Provider, key: str, model: str, refused: _Refused) -> Response:
        now = _now_ms()
        start, window = provider.window(key, now)
        config = provider.config
        wait_ms = start + config.window_ms - now
        if refused.cause == "requests":
            limit, used, unit = config.rpm, window.requests, "requests per min (RPM)"
        else:
            limit, used, unit = config.tpm, window.used, "tokens per min (TPM)"
        message = (
            f"Rate limit reached for {model} on {unit}: Limit {limit}, Used {used}, "
            f"Requested {refused.requested}. Please try again in {duration(wait_ms)}."
        )
        headers = {
            **provider.headers(key, now),
            "retry-after": str(math.ceil(wait_ms / 1000)),
            "retry-after-ms": str(wait_ms),
        }
        body = _error(429, message, refused.cause, "rate_limit_exceeded")
        return JSONResponse(body, status_code=429, headers=headers)

    async def stats(request: Request) -> Response:
        return JSONResponse(provider.stats())

    async def reset(request: Request) -> Response:
        raw = await request.body()
        try:
            changes = json.loads(raw) if raw else {}
            if not isinstance(changes, dict):
                raise ValueError("the body must be a JSON object")
            provider.reset(ProviderConfig.from_json(changes, provider.config))
        except (ValueError, TypeError) as err:
            return bad(str(err))
        return JSONResponse(provider.stats())

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/stats", stats, methods=["GET"]),
            Route("/reset", reset, methods=["POST"]),
        ]
    )
    app.state.provider = provider
    return app


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    args = vars(_parser().parse_args(argv))
    host, port = args.pop("host"), args.pop("port")
    config = ProviderConfig(**args)
    # One worker: the limits live in this process's memory.
    uvicorn.run(create_app(config), host=host, port=port, log_level="warning", access_log=False)


# --------------------------------------------------------------------------
# Running it in a subprocess
# --------------------------------------------------------------------------


class RunningProvider:
    """A provider started by :func:`start_provider`; stop it, or use ``with``."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.process = process
        self.port = port
        self.log = log
        self.url = f"http://{HOST}:{port}"
        self.base_url = f"{self.url}/v1"
        """What ``openai.AsyncOpenAI(base_url=...)`` takes."""
        self._http = httpx.Client(base_url=self.url, timeout=10.0)

    def stats(self) -> ProviderStats:
        return _parse_stats(self._http.get("/stats").raise_for_status().json())

    def reset(self, config: ProviderConfig | None = None) -> ProviderStats:
        """Forget all counts; with ``config``, run with it from now on."""
        body = config.as_json() if config is not None else {}
        return _parse_stats(self._http.post("/reset", json=body).raise_for_status().json())

    def stop(self) -> None:
        self._http.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=_STOP_TIMEOUT)

    def __enter__(self) -> RunningProvider:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _parse_stats(data: dict[str, Any]) -> ProviderStats:
    config = ProviderConfig.from_json(data["config"])
    return ProviderStats(config, {k: KeyStats.from_json(v) for k, v in data["keys"].items()})


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def start_provider(config: ProviderConfig | None = None) -> RunningProvider:
    """Start the provider on a free loopback port; return once it answers."""
    config = config or ProviderConfig()
    logdir = Path(tempfile.mkdtemp(prefix="atomlimit-provider-"))
    for attempt in range(_PORT_ATTEMPTS):
        port = _free_port()
        log = logdir / f"provider-{attempt}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, __file__, "--port", str(port), *config.argv()],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        running = RunningProvider(process, port, log)
        try:
            if _answers(running):
                return running
        except BaseException:
            running.stop()
            raise
        running.stop()
        # Another process can take the port between the probe and the bind.
        if "address already in use" not in log.read_text().lower():
            raise RuntimeError(f"the provider exited on port {port}:\n{log.read_text()}")
    raise RuntimeError(f"the provider did not start after {_PORT_ATTEMPTS} ports")


def _answers(running: RunningProvider) -> bool:
    """Poll until the provider answers; False if its process exits first."""
    deadline = time.monotonic() + _STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if running.process.poll() is not None:
            return False
        with contextlib.suppress(httpx.TransportError):
            running.stats()
            return True
        time.sleep(0.02)
    raise RuntimeError(f"the provider on port {running.port} did not answer:\n{running.log}")


if __name__ == "__main__":
    main()
