"""What a paid model call is limited by: the upstream's limits and the client's.

An [`Upstream`][atomlimit.Upstream] is one provider model or API key, whose
limits the whole fleet shares: one subject, the upstream's name, for every
worker. [`ClientLimits`][atomlimit.ClientLimits] are one client's own, charged
to the client named in each call. Each limit says what it counts, by the
field it is given in:

- ``requests``: one per call;
- ``tokens``: the call's token estimate, held, then settled to the actual;
- ``spend``: the call's estimated cost, held, then settled to the actual;
- ``in_flight``: a lease, held for the call and always given back.

Each field takes one spec or a sequence of them (a per-minute and a per-day
token limit, say). ``AsyncLimiter.call`` and ``Limiter.call`` run a request
under both; see docs/llm.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

from atomlimit._errors import InvalidInput
from atomlimit._inputs import MAX_SUBJECT, check_flag, show
from atomlimit._provider_headers import ProviderReport as ProviderReport
from atomlimit._provider_headers import Reading as Reading
from atomlimit._provider_headers import read_headers as read_headers
from atomlimit.specs import Concurrency, RateLimit, Spec, SpendCap

Role = Literal["requests", "tokens", "spend", "in_flight"]
ROLES: tuple[Role, ...] = ("requests", "tokens", "spend", "in_flight")
MAX_PER_ROLE = 8
"""Most limits one field takes: each is a key the call's one script touches."""
MAX_PAUSE = timedelta(hours=1)
"""The longest pause an upstream takes: a provider's ``Retry-After`` beyond
it is cut to it, and a longer pause asked for directly is refused."""

_KINDS: dict[Role, type[Spec[Any]]] = {
    "requests": RateLimit,
    "tokens": RateLimit,
    "spend": SpendCap,
    "in_flight": Concurrency,
}


@dataclass(frozen=True, slots=True, init=False)
class ClientLimits:
    """One client's own limits on model calls, each in the field of what it counts.

    ``requests`` and ``tokens`` take [`RateLimit`][atomlimit.RateLimit]s (tokens
    need the fixed-window, GCRA or sliding-counter algorithm, which can hold an
    estimate), ``spend`` [`SpendCap`][atomlimit.SpendCap]s and ``in_flight``
    [`Concurrency`][atomlimit.Concurrency] limits.

    >>> from atomlimit import ClientLimits, RateLimit
    >>> daily = RateLimit.parse("2000000/day", name="client-tokens")
    >>> ClientLimits(tokens=daily).tokens == (daily,)
    True
    """

    requests: tuple[RateLimit, ...]
    tokens: tuple[RateLimit, ...]
    spend: tuple[SpendCap, ...]
    in_flight: tuple[Concurrency, ...]

    def __init__(
        self,
        *,
        requests: RateLimit | Sequence[RateLimit] = (),
        tokens: RateLimit | Sequence[RateLimit] = (),
        spend: SpendCap | Sequence[SpendCap] = (),
        in_flight: Concurrency | Sequence[Concurrency] = (),
    ) -> None:
        given = {"requests": requests, "tokens": tokens, "spend": spend, "in_flight": in_flight}
        for role in ROLES:
            object.__setattr__(self, role, _limits(role, given[role]))

    def limits(self) -> list[tuple[Role, Spec[Any]]]:
        """Every limit with the field it was given in, in field order."""
        return [(role, spec) for role in ROLES for spec in getattr(self, role)]


@dataclass(frozen=True, slots=True, init=False)
class Upstream(ClientLimits):
    """A provider model or API key: limits the whole fleet shares, under ``name``.

    The upstream's limits are charged to one subject, ``name``, whichever
    worker calls. Its ``requests`` and ``tokens`` limits are the provider's
    own: a pause (``backoff``) and the provider's reported figures
    (``observe``) apply to them. It needs at least one of those two.

    With ``slow_start``, for fleets that ``observe`` every response: until
    the provider has first reported, the first window of a fixed-window
    limit holds back half of it, so the fleet's first burst does not run
    into outside use it cannot yet know of; the first report gives the half
    back. Without a report, the first window only ever has half.

    >>> from atomlimit import Concurrency, RateLimit, Upstream
    >>> upstream = Upstream(
    ...     "openai:gpt-4.1",
    ...     requests=RateLimit.parse("500/minute", name="openai-rpm"),
    ...     tokens=RateLimit.parse("200000/minute", name="openai-tpm"),
    ...     in_flight=Concurrency(name="openai-inflight", limit=50),
    ... )
    >>> ", ".join(spec.name for _, spec in upstream.limits())
    'openai-rpm, openai-tpm, openai-inflight'
    """

    name: str
    slow_start: bool

    def __init__(
        self,
        name: str,
        *,
        requests: RateLimit | Sequence[RateLimit] = (),
        tokens: RateLimit | Sequence[RateLimit] = (),
        spend: SpendCap | Sequence[SpendCap] = (),
        in_flight: Concurrency | Sequence[Concurrency] = (),
        slow_start: bool = False,
    ) -> None:
        if type(name) is not str or not 0 < len(name) <= MAX_SUBJECT:
            raise InvalidInput(
                f"Upstream.name must be a str of 1 to {MAX_SUBJECT} characters, got {show(name)}"
            )
        ClientLimits.__init__(
            self, requests=requests, tokens=tokens, spend=spend, in_flight=in_flight
        )
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "slow_start", check_flag(slow_start, "slow_start"))
        if not self.requests and not self.tokens:
            raise InvalidInput(
                "Upstream needs requests or tokens limits: the provider's own limits, "
                "which the fleet shares"
            )


def _limits(role: Role, value: object) -> tuple[Any, ...]:
    kind = _KINDS[role]
    specs = (value,) if isinstance(value, Spec) else value
    if not isinstance(specs, list | tuple) or len(specs) > MAX_PER_ROLE:
        raise InvalidInput(
            f"{role} takes a {kind.__name__} or a list of at most {MAX_PER_ROLE}, got {show(value)}"
        )
    names = set()
    for spec in specs:
        if type(spec) is not kind:
            raise InvalidInput(f"{role} takes {kind.__name__}s, got {type(spec).__name__}")
        if role == "tokens" and isinstance(spec, RateLimit) and spec.algorithm == "sliding_log":
            raise InvalidInput(
                f"tokens: {spec.name!r} is a sliding_log, which cannot hold an estimate; "
                "use fixed_window, gcra or sliding_counter"
            )
        if spec.name in names:
            raise InvalidInput(f"{role} names {spec.name!r} twice")
        names.add(spec.name)
    return tuple(specs)
