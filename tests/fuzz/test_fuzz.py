"""Hostile input against every public entry point, on a real server.

Each call takes a mix of valid and hostile values: huge and tiny Decimals,
huge ints, floats, bools, NaN, text with control characters and key
separators, very long text, extreme durations and values of the wrong type.
Whatever the input:

- nothing but InvalidInput escapes: a valid call returns its result, and a
  refusal's message stays short;
- a refused call writes nothing: DBSIZE is the same after it;
- after an accepted call, every key on the server has an expiry.

Provider headers are held to more: they come off the network, so reading
them raises nothing at all, and every figure read is within its bounds.

Only the public API is used. The ``ci`` profile replays the same examples on
every run; each test sets its own ``max_examples`` so that the whole file
stays well under a minute. An input that once broke one of the three rules
is kept as an ``@example``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from fractions import Fraction
from typing import Any, NamedTuple, NoReturn
from uuid import UUID

import pytest
import redis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from redis.backoff import NoBackoff
from redis.retry import Retry
from servers import Server

from atomlimit import (
    Breaker,
    ClientLimits,
    Concurrency,
    DenyCache,
    Hit,
    InvalidInput,
    Limiter,
    LimitExceeded,
    RateLimit,
    RequestIdReused,
    Spec,
    SpendCap,
    Upstream,
)
from atomlimit._inputs import MAX_WINDOW
from atomlimit._money import MAX_UNITS
from atomlimit._provider_headers import (
    MAX_FIELDS,
    MAX_RESET,
    MAX_RETRY_AFTER,
    QUOTAS,
    ProviderReport,
    read_headers,
)
from atomlimit.cache import Cache, Category
from atomlimit.compat import RedisClient
from atomlimit.observe import Observer
from atomlimit.policies import load, parse
from atomlimit.sessions import SessionStore


def fuzz(max_examples: int) -> settings:
    # The fixtures' server outlives the examples, and a few drawn values are
    # large on purpose (a 65,537-character subject).
    return settings(
        max_examples=max_examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.large_base_example],
    )


LONGEST_MESSAGE = 4_000
"""No refusal's message is longer, whatever the input. The longest there is
names a 256-character key part whose every character had to be escaped."""


# --------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------


class Loud:
    """A value whose repr, str, equality, truth and length all raise.

    A check must find out a value's type before it asks anything of it; the
    message of a refusal may name the type only.
    """

    def _called(self, *args: object) -> NoReturn:
        raise AssertionError("a check used a value before knowing its type")

    __repr__ = __str__ = __eq__ = __ne__ = __bool__ = __len__ = __iter__ = _called  # type: ignore[assignment]
    __hash__ = None  # type: ignore[assignment]

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text("Loud()")  # how Hypothesis shows it in a failing example


class Float64(float):
    """A float subclass whose repr is not a number, as numpy's is."""

    def __repr__(self) -> str:
        return f"Float64({float.__repr__(self)})"


class Profile(BaseModel):
    name: str


LOUD = Loud()
HUGE_INTS = (10**4300, 10**5000, -(10**5000))
"""Past 4,300 digits, where ``str()`` of an int raises ValueError."""
INT_EDGES = (0, 1, 2, -1, 2**31, 2**53 - 1, 2**53, 2**63, 2**64, -(2**63))
NON_FINITE = tuple(
    Decimal(text) for text in ("sNaN", "-sNaN", "NaN", "-NaN", "Infinity", "-Infinity")
)
"""A signalling NaN raises on hashing and on comparison, where a quiet one does not."""
DECIMAL_EDGES = NON_FINITE + tuple(
    Decimal(text)
    for text in (
        "1E+999999999",
        "1E+10000000",
        "-1E+999999999",
        "1E-999999999",
        "0E+999999999",
        "-0",
        "0",
        "0.0000001",
        "0.000001",
        "0.37",
        "1.00",
        "100",
        "9007199254.740991",
        "9007199254.740992",
        "1." + "0" * 39,
        "1." + "0" * 40,
        "0." + "1" * 60,
        "9" * 100,
    )
)
TEXT_EDGES = (
    "",
    " ",
    ":",
    "{",
    "}",
    "{}",
    "{s:x}",
    "a:b",
    "::",
    "\x00",
    "\n",
    "\t",
    "\x7f",
    "\u200b",
    "é",
    "\ud800",
    "\udfff",
    "😀",
    "@x",
    "%3A",
    "UTC",
    "Australia/Sydney",
    "../../etc/passwd",
    "/etc/passwd",
    "zone.tab",
    "day",
    "month",
    "gcra",
    "server",
    "1E+999999999",
    "sNaN",
    "0.37",
    "x" * 64,
    "x" * 65,
    "x" * 129,
    "x" * 256,
    "x" * 257,
    "x" * 1_024,
    "x" * 1_025,
    "é" * 1_000,
    "x" * 65_536,
    "x" * 65_537,
)
DURATION_EDGES = (
    timedelta.max,
    timedelta.min,
    timedelta(0),
    -timedelta(milliseconds=1),
    timedelta(microseconds=1),
    timedelta(microseconds=999),
    timedelta(milliseconds=1),
    timedelta(microseconds=1_500),
    timedelta(seconds=1),
    timedelta(days=1),
    timedelta(days=1, milliseconds=1),
    timedelta(days=366),
    timedelta(days=366, microseconds=1),
    timedelta(days=3_650),
    timedelta(days=3_650, milliseconds=1),
)

texts = st.one_of(
    st.sampled_from(TEXT_EDGES),
    st.text(max_size=12),
    st.text(alphabet=":{}\x00 \n\ud800aé", max_size=8),
)
decimals = st.one_of(
    st.sampled_from(NON_FINITE),
    st.sampled_from(DECIMAL_EDGES),
    st.decimals(min_value=0, max_value=50, places=2),
    st.decimals(),
    st.builds(
        lambda sign, digits, power: Decimal((sign, tuple(digits), power)),
        st.integers(0, 1),
        st.lists(st.integers(0, 9), min_size=1, max_size=45),
        st.integers(-(10**9), 10**9),
    ),
)
durations = st.one_of(st.sampled_from(DURATION_EDGES), st.timedeltas())


def anything(*, huge_ints: bool = True, loud: bool = True) -> st.SearchStrategy[object]:
    """Any hostile value: text, numbers, durations, and values of the wrong type.

    ``huge_ints`` and ``loud`` add ints of thousands of digits and values
    whose every operation raises.
    """
    ints = st.one_of(
        st.integers(-3, 30),
        st.integers(),
        st.sampled_from(INT_EDGES + HUGE_INTS if huge_ints else INT_EDGES),
    )
    odd = [
        st.none(),
        st.booleans(),
        st.floats(),
        st.just(Float64(0.37)),
        st.binary(max_size=8),
        st.lists(st.integers(), max_size=3),
        st.tuples(st.text(max_size=3)),
        st.just(object()),
        st.just(int),
    ]
    if loud:
        odd.append(st.just(LOUD))
    return st.one_of(texts, ints, decimals, durations, *odd)


def mostly(
    valid: st.SearchStrategy[Any], bad: st.SearchStrategy[Any], *, one_in: int = 5
) -> st.SearchStrategy[Any]:
    """``valid``, except one draw in ``one_in``, from ``bad``.

    Not ``st.one_of(valid, bad)``: that flattens ``bad``'s own dozen branches
    beside ``valid``, so a call with several arguments would almost never
    get all of them valid, and the accepted paths would go untested. This
    shrinks towards ``valid``: a failing example keeps hostile only the
    arguments that matter.
    """
    return st.integers(0, one_in - 1).flatmap(lambda n: bad if n == one_in - 1 else valid)


def valid_or(
    valid: st.SearchStrategy[Any], *, one_in: int = 5, **hostile: bool
) -> st.SearchStrategy[Any]:
    return mostly(valid, anything(**hostile), one_in=one_in)


RATES = (
    RateLimit(name="fixed", limit=5, window="minute"),
    RateLimit(name="sydney", limit=3, window="day", tz="Australia/Sydney"),
    RateLimit(name="blink", limit=2, window=timedelta(milliseconds=50)),
    RateLimit(name="smooth", limit=5, window="second", algorithm="gcra", burst=2),
    RateLimit(name="log", limit=3, window=timedelta(seconds=1), algorithm="sliding_log"),
    RateLimit(name="counter", limit=4, window="minute", algorithm="sliding_counter"),
    RateLimit(name="trial", limit=1, window=timedelta(days=366), shadow=True),
)
CAPS = (
    SpendCap(name="ai", limit=Decimal("10.00"), currency="AUD", window="day"),
    SpendCap(
        name="cents",
        limit=Decimal("1.00"),
        currency="USD",
        window=timedelta(seconds=1),
        unit=Decimal("0.01"),
    ),
    SpendCap(name="most", limit=Decimal("9007199254.740991"), currency="AUD", window="month"),
)
SLOTS = (
    Concurrency(name="slots", limit=2, lease=timedelta(milliseconds=200)),
    Concurrency(name="year", limit=1, lease=timedelta(days=366)),
)

subjects = valid_or(st.one_of(st.sampled_from(["s", "client-42", "{s}", "a:b", ""]), texts))
request_ids = valid_or(st.one_of(st.none(), st.sampled_from(["r1", "r2"])))
money = st.decimals(min_value=0, max_value=3, places=2)
# An amount's hostile draws lean on Decimals: among all of anything()'s
# branches, a signalling NaN came one SpendCap cost in thousands.
amounts = mostly(money, st.one_of(decimals, anything()))


def costs_for(spec: object) -> st.SearchStrategy[object]:
    if isinstance(spec, SpendCap):
        return amounts
    return valid_or(st.integers(0, 3))


def with_cost(specs: st.SearchStrategy[object]) -> st.SearchStrategy[tuple[Any, Any]]:
    """A spec (or a hostile stand-in) and a cost drawn for it."""
    return specs.flatmap(lambda spec: st.tuples(st.just(spec), costs_for(spec)))


limits = valid_or(st.sampled_from(RATES + CAPS + SLOTS))


# --------------------------------------------------------------------------
# The three rules
# --------------------------------------------------------------------------


class Refused(NamedTuple):
    error: InvalidInput


class Watch:
    """Runs a call and checks the three rules around it."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def __call__(self, call: Callable[[], Any], *, lasting: bytes | None = None) -> Any:
        """The call's result, or Refused; any other exception fails the test.

        ``lasting``: keys ending so may be kept without an expiry (an
        override set until it is deleted).
        """
        # The keys, not their count: a key of a short window left by an
        # earlier call may expire meanwhile, which is no write.
        before = set(self.client.scan_iter(count=1_000))
        try:
            result = call()
        except RequestIdReused as err:
            # Found by the server, so after sending: nothing was charged, but
            # an acquire may have taken back what it charged before the reuse.
            self.every_key_expires()
            return Refused(err)
        except InvalidInput as err:
            refused = Refused(err)
        else:
            self.every_key_expires(lasting)
            return result
        message = str(refused.error)
        assert len(message) <= LONGEST_MESSAGE, f"a {len(message)}-character message"
        added = set(self.client.scan_iter(count=1_000)) - before
        assert not added, f"refused, yet written: {message}: {sorted(added)[:3]}"
        return refused

    def every_key_expires(self, lasting: bytes | None = None) -> None:
        keys = [
            key
            for key in self.client.scan_iter(count=1_000)
            if lasting is None or not key.endswith(lasting)
        ]
        with self.client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.pttl(key)
            ttls = pipe.execute()
        # -2: expired between SCAN and PTTL, which is what expiring is for.
        forever = [key for key, ttl in zip(keys, ttls, strict=True) if ttl == -1]
        assert not forever, f"keys without an expiry: {forever[:5]}"


@pytest.fixture
def fuzz_server(server_pool: Any) -> Server:
    """One standalone server, emptied. One kind is enough: these tests are
    about input, and the suite runs both kinds everywhere else."""
    kind = next((kind for kind in ("valkey", "redis") if kind in server_pool.binaries), "valkey")
    server: Server = server_pool.standalone(kind)
    with server.client() as client:
        client.flushall()
    return server


@pytest.fixture
def client(fuzz_server: Server) -> Iterator[redis.Redis]:
    with fuzz_server.client() as client:
        yield client


@pytest.fixture
def watch(client: redis.Redis) -> Watch:
    return Watch(client)


# --------------------------------------------------------------------------
# Specs and the limiter
# --------------------------------------------------------------------------

NO_RETRY = Retry(NoBackoff(), 0)
LOCAL_SHARES = [Fraction(1, 8), Fraction(1), Decimal("0.5"), "1/4", "0.25", 1, Fraction(1, 10**6)]

KINDS: dict[type[Spec[Any]], dict[str, Any]] = {
    RateLimit: {"name": "n", "limit": 5, "window": "minute"},
    SpendCap: {"name": "n", "limit": Decimal("10.00"), "currency": "AUD", "window": "day"},
    Concurrency: {"name": "n", "limit": 2},
}
VALID_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "name": st.sampled_from(["n", "api", "é", "{x}:y", "x" * 256]),
    "window": st.sampled_from(
        ["second", "minute", "day", "month", timedelta(milliseconds=5), timedelta(days=366)]
    ),
    "tz": st.sampled_from(["UTC", "Australia/Sydney", "America/Argentina/ComodRivadavia"]),
    "algorithm": st.sampled_from(["fixed_window", "gcra", "sliding_log", "sliding_counter"]),
    "burst": st.integers(1, 10),
    "max_log": st.integers(1, 20_000),
    "shadow": st.booleans(),
    "currency": st.sampled_from(["AUD", "usd", "tokens_1"]),
    "unit": st.sampled_from([Decimal("0.01"), Decimal(1), Decimal("1E-18"), Decimal("1.000")]),
    "lease": st.sampled_from([timedelta(milliseconds=1), timedelta(days=366)]),
    # "allow" and "local" are refused by a SpendCap, "allow_unmetered_spend"
    # and "local_spend" by the others; "local" needs a local_share.
    "on_backend_error": st.sampled_from(
        ["raise", "deny", "allow", "allow_unmetered_spend", "local", "local_spend"]
    ),
    "local_share": st.sampled_from(LOCAL_SHARES),
}
LIMIT_FIELDS = {
    RateLimit: st.integers(1, 100),
    SpendCap: st.one_of(money, st.integers(1, 100), st.sampled_from(["10.00", "1E+2"])),
    Concurrency: st.integers(1, 3),
}
FIELDS_OF = {
    RateLimit: (
        "name",
        "window",
        "tz",
        "algorithm",
        "burst",
        "max_log",
        "shadow",
        "on_backend_error",
        "local_share",
    ),
    SpendCap: (
        "name",
        "window",
        "tz",
        "currency",
        "unit",
        "shadow",
        "on_backend_error",
        "local_share",
    ),
    Concurrency: ("name", "lease", "on_backend_error", "local_share"),
}


def fields_for(kind: type[Spec[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    optional = {field: valid_or(VALID_FIELDS[field]) for field in FIELDS_OF[kind]}
    optional["limit"] = valid_or(LIMIT_FIELDS[kind])
    optional["per"] = anything()  # no spec has it
    return st.fixed_dictionaries({}, optional=optional)


specs = st.sampled_from(list(KINDS)).flatmap(
    lambda kind: st.tuples(st.just(kind), fields_for(kind))
)


def test_specs_refuse_bad_fields_briefly_and_every_spec_built_can_be_used(
    client: redis.Redis, watch: Watch
) -> None:
    limiter = Limiter(client)

    @fuzz(max_examples=250)
    @given(spec=specs)
    # Accepted, then failed with OverflowError after the first hit had written.
    @example(spec=(RateLimit, {"window": timedelta.max}))
    @example(spec=(Concurrency, {"lease": timedelta.max}))
    # decimal.Overflow out of normalize().
    @example(spec=(SpendCap, {"unit": Decimal("1E+999999999")}))
    # as_integer_ratio() that never returns.
    @example(spec=(SpendCap, {"limit": "1E+999999999"}))
    # ValueError from str() of a huge int while the message was built.
    @example(spec=(RateLimit, {"limit": 10**5000}))
    @example(spec=(SpendCap, {"limit": 10**5000}))
    @example(spec=(RateLimit, {"tz": 10**5000}))
    @example(spec=(RateLimit, {"per": 10**5000}))
    def build_and_use(spec: tuple[type[Spec[Any]], dict[str, Any]]) -> None:
        client.flushall()
        kind, fields = spec
        built = watch(lambda: kind(**{**KINDS[kind], **fields}))
        if isinstance(built, Refused):
            assert str(built.error).startswith(f"{kind.__name__}.")
        elif isinstance(built, Concurrency):
            watch(lambda: limiter.lease(built, "s", raise_on_deny=False).release())
        else:
            watch(lambda: limiter.hit(built, "s"))

    build_and_use()


def test_the_local_fallback_takes_any_share_and_subject_bound(watch: Watch) -> None:
    """A server that is gone, limits decided in-process: only InvalidInput escapes."""

    @fuzz(max_examples=150)
    @given(
        kind=st.sampled_from(list(KINDS)),
        share=valid_or(st.sampled_from(LOCAL_SHARES)),
        limit=valid_or(st.integers(1, 10**6)),
        subjects=valid_or(st.integers(1, 3)),
        subject=valid_or(st.sampled_from(["a", "b", "c", "d"])),
        cost=valid_or(st.integers(0, 5)),
    )
    @example(kind=RateLimit, share=Decimal("1E+999999999"), limit=5, subjects=1, subject="a",
             cost=1)  # fmt: skip
    # Terms of 4,000 digits (more, and the example itself cannot be printed).
    @example(kind=RateLimit, share=Fraction(10**4000 - 1, 10**4000), limit=5, subjects=1,
             subject="a", cost=1)  # fmt: skip
    @example(kind=RateLimit, share="9" * 10**5, limit=5, subjects=1, subject="a", cost=1)
    @example(kind=Concurrency, share=1, limit=5, subjects=10**6 + 1, subject="a", cost=1)
    def decide_locally(
        kind: type[Spec[Any]], share: Any, limit: Any, subjects: Any, subject: Any, cost: Any
    ) -> None:
        policy = "local_spend" if kind is SpendCap else "local"
        fields = {**KINDS[kind], "limit": limit, "on_backend_error": policy, "local_share": share}
        if kind is RateLimit:
            fields["algorithm"] = "gcra" if isinstance(limit, int) and limit % 2 else "sliding_log"
            fields["window"] = timedelta(seconds=10)
        spec = watch(lambda: kind(**fields))
        dead = redis.Redis(host="127.0.0.1", port=1, retry=NO_RETRY)
        limiter = watch(lambda: Limiter(dead, local_subjects=subjects))
        if isinstance(spec, Refused) or isinstance(limiter, Refused):
            return
        for _ in range(3):
            if isinstance(spec, Concurrency):
                lease = watch(lambda: limiter.lease(spec, subject, raise_on_deny=False))
                if not isinstance(lease, Refused):
                    assert lease.decision.degraded
            else:
                decision = watch(lambda: limiter.hit(spec, subject, cost))
                if not isinstance(decision, Refused):
                    assert decision.degraded
                    assert decision.remaining <= decision.limit
        dead.close()

    decide_locally()


class Quiet(Observer):
    """An observer that inherits the protocol's methods, which do nothing."""


def test_limiter_options_are_refused_or_give_a_working_limiter(
    client: redis.Redis, watch: Watch
) -> None:
    @fuzz(max_examples=100)
    @given(
        prefix=valid_or(st.sampled_from(["atomlimit", "app.v2", "x" * 64])),
        request_ttl=valid_or(st.sampled_from([timedelta(days=1), timedelta(days=3_650)])),
        retry_ttl=valid_or(st.sampled_from([timedelta(minutes=2), timedelta(milliseconds=1)])),
        time_source=mostly(st.sampled_from(["server", "client"]), anything()),
        breaker=valid_or(st.sampled_from([Breaker(), None, Breaker(failures=1000)])),
        observers=valid_or(st.sampled_from([(), [Quiet()], (Quiet(),) * 16])),
        strict=valid_or(st.booleans()),
        local_subjects=valid_or(st.sampled_from([1, 10_000, 1_000_000])),
        deny_cache=valid_or(
            st.one_of(
                st.none(),
                st.sampled_from([1, 1_000_000]),
                st.builds(DenyCache, st.integers(1, 1_000_000)),
            )
        ),
    )
    def configure(
        prefix: Any,
        request_ttl: Any,
        retry_ttl: Any,
        time_source: Any,
        breaker: Any,
        observers: Any,
        strict: Any,
        local_subjects: Any,
        deny_cache: Any,
    ) -> None:
        client.flushall()
        limiter = watch(
            lambda: Limiter(
                client,
                prefix=prefix,
                request_ttl=request_ttl,
                retry_ttl=retry_ttl,
                time_source=time_source,
                breaker=breaker,
                observers=observers,
                strict=strict,
                local_subjects=local_subjects,
                deny_cache=deny_cache,
            )
        )
        if not isinstance(limiter, Refused):
            assert not isinstance(
                watch(lambda: limiter.hit(RATES[0], "s", request_id="r")), Refused
            )

    configure()


def test_hit_takes_anything_and_refuses_what_it_cannot_charge(
    client: redis.Redis, watch: Watch
) -> None:
    limiter = Limiter(client)

    @fuzz(max_examples=150)
    @given(
        limit_and_cost=with_cost(limits),
        subject=subjects,
        request_id=request_ids,
        partial=valid_or(st.booleans()),
    )
    # ValueError from str() of the cost while the message was built.
    @example(limit_and_cost=(CAPS[0], 10**5000), subject="s", request_id=None, partial=False)
    # as_integer_ratio() that takes six seconds.
    @example(
        limit_and_cost=(CAPS[0], Decimal("1E+10000000")),
        subject="s",
        request_id=None,
        partial=False,
    )
    # TypeError from hashing a signalling NaN.
    @example(limit_and_cost=(CAPS[0], Decimal("sNaN")), subject="s", request_id=None, partial=False)
    def hit(limit_and_cost: tuple[Any, Any], subject: Any, request_id: Any, partial: Any) -> None:
        client.flushall()
        spec, cost = limit_and_cost
        watch(lambda: limiter.hit(spec, subject, cost, request_id=request_id, partial=partial))

    hit()


def test_a_cached_denial_refuses_what_the_server_path_refuses(
    client: redis.Redis, watch: Watch
) -> None:
    limiter = Limiter(client, deny_cache=DenyCache(max_entries=64))

    @fuzz(max_examples=100)
    @given(
        limit_and_cost=with_cost(limits),
        subject=subjects,
        partial=valid_or(st.booleans()),
    )
    def hit(limit_and_cost: tuple[Any, Any], subject: Any, partial: Any) -> None:
        spec, cost = limit_and_cost
        if isinstance(spec, RateLimit | SpendCap) and isinstance(subject, str):
            # Deny the subject outright first, so the call below meets its cached denial.
            watch(lambda: limiter.hit(spec, subject, spec.limit + 1))
        watch(lambda: limiter.hit(spec, subject, cost, partial=partial))

    hit()


def test_peek_and_refund_take_anything_and_write_nothing_when_refusing(
    client: redis.Redis, watch: Watch
) -> None:
    limiter = Limiter(client)

    @fuzz(max_examples=150)
    @given(
        limit_and_cost=with_cost(limits),
        subject=subjects,
        request_id=request_ids,
        refund=st.booleans(),
    )
    # TypeError from hashing a signalling NaN.
    @example(limit_and_cost=(CAPS[1], Decimal("sNaN")), subject="s", request_id=None, refund=False)
    @example(limit_and_cost=(CAPS[1], Decimal("sNaN")), subject="s", request_id=None, refund=True)
    def peek_or_refund(
        limit_and_cost: tuple[Any, Any], subject: Any, request_id: Any, refund: bool
    ) -> None:
        client.flushall()
        spec, cost = limit_and_cost
        if refund:
            watch(lambda: limiter.refund(spec, subject, cost, request_id=request_id))
        else:
            watch(lambda: limiter.peek(spec, subject, cost))

    peek_or_refund()


def test_reset_takes_anything(client: redis.Redis, watch: Watch) -> None:
    limiter = Limiter(client)

    @fuzz(max_examples=60)
    @given(limit=limits, subject=subjects)
    def reset(limit: Any, subject: Any) -> None:
        client.flushall()
        watch(lambda: limiter.hit(RATES[0], "s"))
        watch(lambda: limiter.reset(limit, subject))

    reset()


def hits() -> st.SearchStrategy[object]:
    holds = valid_or(st.one_of(st.none(), st.just(timedelta(minutes=5))))
    one = valid_or(
        st.builds(
            lambda limit_and_cost, subject, hold: Hit(
                limit_and_cost[0], subject, limit_and_cost[1], hold
            ),
            with_cost(limits),
            subjects,
            holds,
        )
    )
    many = st.lists(one, max_size=4)
    return mostly(st.one_of(many, many.map(tuple)), anything())


def test_acquire_takes_anything_and_charges_all_or_nothing(
    client: redis.Redis, watch: Watch
) -> None:
    limiter = Limiter(client)

    @fuzz(max_examples=150)
    @given(hits=hits(), request_id=request_ids)
    # TypeError from hashing a signalling NaN.
    @example(hits=[Hit(CAPS[0], "s", Decimal("-sNaN"))], request_id=None)
    def acquire(hits: Any, request_id: Any) -> None:
        client.flushall()
        watch(lambda: limiter.acquire(hits, request_id=request_id))

    acquire()


def test_undo_acquire_takes_anything_and_leaves_every_key_expiring(
    client: redis.Redis, watch: Watch
) -> None:
    limiter = Limiter(client)

    @fuzz(max_examples=100)
    @given(hits=hits(), request_id=request_ids)
    def undo(hits: Any, request_id: Any) -> None:
        client.flushall()
        watch(lambda: limiter.acquire(hits, request_id=request_id))
        watch(lambda: limiter.undo_acquire(hits, request_id=request_id))

    undo()


def test_hit_many_takes_anything_and_decides_every_hit(client: redis.Redis, watch: Watch) -> None:
    limiter = Limiter(client)

    @fuzz(max_examples=100)
    @given(hits=hits())
    # One past the most hits one call takes.
    @example(hits=[Hit(RATES[0], "s")] * 10_001)
    def hit_many(hits: Any) -> None:
        client.flushall()
        decisions = watch(lambda: limiter.hit_many(hits))
        if not isinstance(decisions, Refused):
            assert len(decisions) == len(hits)

    hit_many()


def exceeded_or(call: Callable[[], Any]) -> Callable[[], Any]:
    """``call``, with a LimitExceeded it raises returned: a denial, not a refusal."""

    def run() -> Any:
        try:
            return call()
        except LimitExceeded as err:
            return err

    return run


# A fresh subject fits any cost within its limit at once, so no example waits
# long; one that can never fit is refused at once too.
timeouts = valid_or(st.sampled_from([None, 0, 0.05, timedelta(0), timedelta(milliseconds=50)]))


def test_wait_takes_anything_and_charges_only_what_fits(client: redis.Redis, watch: Watch) -> None:
    limiter = Limiter(client)

    @fuzz(max_examples=100)
    @given(limit_and_cost=with_cost(limits), subject=subjects, timeout=timeouts)
    @example(limit_and_cost=(RATES[0], 1), subject="s", timeout=timedelta.max)
    @example(limit_and_cost=(RATES[0], 1), subject="s", timeout=10**5000)
    @example(limit_and_cost=(RATES[0], 1), subject="s", timeout=float("nan"))
    def wait(limit_and_cost: tuple[Any, Any], subject: Any, timeout: Any) -> None:
        client.flushall()
        spec, cost = limit_and_cost
        outcome = watch(exceeded_or(lambda: limiter.wait(spec, subject, cost, timeout=timeout)))
        if isinstance(outcome, LimitExceeded):
            assert client.dbsize() == 0  # a cost that can never fit charged nothing

    wait()


# --------------------------------------------------------------------------
# Budgeted model calls
# --------------------------------------------------------------------------


def role_specs() -> st.SearchStrategy[object]:
    """What one field of an Upstream or ClientLimits takes: a spec, a list, or not."""
    one = st.sampled_from(RATES + CAPS + SLOTS)
    return valid_or(st.one_of(st.just(()), one, st.lists(one, max_size=3)))


def roles() -> st.SearchStrategy[dict[str, object]]:
    return st.fixed_dictionaries(
        {},
        optional={
            role: role_specs() for role in ("requests", "tokens", "spend", "in_flight", "extra")
        },
    )


UPSTREAMS = (
    Upstream("openai:gpt", requests=RATES[0], tokens=RATES[5], spend=CAPS[0], in_flight=SLOTS[0]),
    Upstream("{s}:a", tokens=[RATES[0], RATES[3]]),
)
CLIENTS = (ClientLimits(), ClientLimits(tokens=RATES[0], spend=CAPS[1], in_flight=SLOTS[1]))


def test_upstream_and_client_limits_take_anything() -> None:
    @fuzz(max_examples=200)
    @given(name=valid_or(st.sampled_from(["openai", "x" * 300, "{a}"])), fields=roles())
    @example(name="u", fields={"tokens": RATES[4]})  # a sliding log cannot hold
    @example(name="u", fields={"requests": [RATES[0]] * 9})
    @example(name="u", fields={})
    def build(name: Any, fields: dict[str, Any]) -> None:
        for make in (lambda: Upstream(name, **fields), lambda: ClientLimits(**fields)):
            try:
                made = make()
            except InvalidInput as err:
                message = str(err)
            except TypeError:
                assert "extra" in fields  # not a field: Python's own refusal
                continue
            else:
                assert all(isinstance(spec, Spec) for _, spec in made.limits())
                continue
            assert len(message) <= LONGEST_MESSAGE

    build()


def test_call_takes_anything_and_charges_all_or_nothing(client: redis.Redis, watch: Watch) -> None:
    limiter = Limiter(client)

    def block(call: Any, tokens: Any, headers: Any) -> list[Any]:
        with call as entered:
            entered.observe(headers)
            with contextlib.suppress(InvalidInput):  # refused in the block: its end still runs
                entered.settle(tokens=tokens)
        return entered.settlements

    @fuzz(max_examples=150)
    @given(
        upstream=valid_or(st.sampled_from(UPSTREAMS)),
        who=subjects,
        tokens=valid_or(st.integers(0, 10)),
        cost=amounts,
        limits=valid_or(st.one_of(st.none(), st.sampled_from(CLIENTS))),
        timeout=valid_or(st.sampled_from([timedelta(seconds=1), timedelta(minutes=5)])),
        wait=valid_or(st.booleans()),
        wait_timeout=timeouts,
        actual=valid_or(st.one_of(st.none(), st.integers(0, 10**6))),
        headers=valid_or(
            st.dictionaries(st.sampled_from(["retry-after", "x-ratelimit-remaining-tokens"]), texts)
        ),
    )
    @example(
        upstream=UPSTREAMS[0],
        who="c",
        tokens=10**30,
        cost=Decimal(0),
        limits=None,
        timeout=timedelta(minutes=5),
        wait=True,
        wait_timeout=None,
        actual=None,
        headers={},
    )
    def call(
        upstream: Any,
        who: Any,
        tokens: Any,
        cost: Any,
        limits: Any,
        timeout: Any,
        wait: Any,
        wait_timeout: Any,
        actual: Any,
        headers: Any,
    ) -> None:
        client.flushall()

        def run() -> Any:
            made = limiter.call(
                upstream,
                client=who,
                tokens=tokens,
                cost=cost,
                limits=limits,
                timeout=timeout,
                wait=wait,
                wait_timeout=wait_timeout,
            )
            return block(made, actual, headers)

        watch(exceeded_or(run))

    call()


def test_pause_takes_anything(client: redis.Redis, watch: Watch) -> None:
    limiter = Limiter(client)

    @fuzz(max_examples=100)
    @given(
        upstream=valid_or(st.sampled_from(UPSTREAMS)),
        length=valid_or(st.sampled_from([1, 0.5, 3600, timedelta(seconds=2), timedelta(hours=1)])),
        quota=valid_or(st.sampled_from([None, "requests", "tokens"])),
        forget=valid_or(st.booleans()),
    )
    @example(upstream=UPSTREAMS[0], length=3600.000001, quota=None, forget=False)
    @example(upstream=UPSTREAMS[0], length=float("inf"), quota=None, forget=False)
    @example(upstream=UPSTREAMS[0], length=timedelta.max, quota="spend", forget=False)
    def pause(upstream: Any, length: Any, quota: Any, forget: Any) -> None:
        client.flushall()
        watch(lambda: limiter.pause(upstream, length, quota=quota))
        watch(lambda: limiter.clear_pause(upstream, forget=forget))

    pause()


def test_limited_takes_anything_when_it_decorates_and_when_called(
    client: redis.Redis, watch: Watch
) -> None:
    limiter = Limiter(client)

    @fuzz(max_examples=100)
    @given(
        limit_and_cost=with_cost(limits),
        subject=valid_or(st.sampled_from(["s", lambda: "s"])),
        wait=valid_or(st.booleans()),
        timeout=timeouts,
        func=mostly(st.just(lambda: "ran"), anything()),
    )
    def limited(
        limit_and_cost: tuple[Any, Any], subject: Any, wait: Any, timeout: Any, func: Any
    ) -> None:
        client.flushall()
        spec, cost = limit_and_cost
        decorate = watch(
            lambda: limiter.limited(spec, subject=subject, cost=cost, wait=wait, timeout=timeout)
        )
        if isinstance(decorate, Refused):
            return
        job = watch(lambda: decorate(func))
        if isinstance(job, Refused):
            return
        outcome = watch(exceeded_or(job))
        assert isinstance(outcome, Refused | LimitExceeded) or outcome == func()

    limited()


# --------------------------------------------------------------------------
# Per-subject overrides
# --------------------------------------------------------------------------

OVERRIDE_KEY = b":ovr"
"""How an override's key ends: the one key kept without an expiry, while it
is set with none."""


def override_limits_for(spec: object) -> st.SearchStrategy[object]:
    if isinstance(spec, SpendCap):
        return mostly(
            st.decimals(min_value=0, max_value=100, places=2), st.one_of(decimals, anything())
        )
    return valid_or(st.integers(0, 50))


expiries = valid_or(
    st.one_of(
        st.none(),
        st.timedeltas(min_value=timedelta(seconds=-5), max_value=timedelta(days=4000)),
        st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=-11))])),
        st.datetimes(),  # naive
        durations,
    )
)


def test_override_set_takes_anything_and_writes_nothing_when_refusing(
    client: redis.Redis, watch: Watch
) -> None:
    limiter = Limiter(client)

    @fuzz(max_examples=150)
    @given(
        spec_and_limit=limits.flatmap(
            lambda spec: st.tuples(st.just(spec), override_limits_for(spec))
        ),
        subject=subjects,
        burst=valid_or(st.one_of(st.none(), st.integers(0, 10))),
        expires=expiries,
    )
    # A limit of one unit a microsecond too fine for gcra's interval.
    @example(spec_and_limit=(RATES[3], 10**9), subject="s", burst=None, expires=None)
    # A sliding log past its entries' bound.
    @example(spec_and_limit=(RATES[4], 10**5), subject="s", burst=None, expires=None)
    # A Decimal past a cap's places.
    @example(spec_and_limit=(CAPS[1], Decimal("0.001")), subject="s", burst=None, expires=None)
    @example(
        spec_and_limit=(RATES[0], 5),
        subject="s",
        burst=None,
        expires=datetime(2000, 1, 1, tzinfo=UTC),
    )
    def set_override(
        spec_and_limit: tuple[Any, Any], subject: Any, burst: Any, expires: Any
    ) -> None:
        client.flushall()
        spec, limit = spec_and_limit
        watch(lambda: limiter.hit(RATES[0], "s"))  # a marked counter is rewritten in place
        watch(
            lambda: limiter.overrides.set(spec, subject, limit=limit, burst=burst, expires=expires),
            lasting=OVERRIDE_KEY,
        )
        # Whatever was set, every kind still decides under it.
        if isinstance(spec, Spec) and type(subject) is str:
            watch(lambda: limiter.peek(spec, subject), lasting=OVERRIDE_KEY)

    set_override()


def test_override_get_delete_and_list_take_anything(client: redis.Redis, watch: Watch) -> None:
    limiter = Limiter(client)

    @fuzz(max_examples=80)
    @given(
        spec=limits,
        subject=subjects,
        count=valid_or(st.integers(1, 10_000)),
        action=st.sampled_from(["get", "delete", "list"]),
    )
    def read_or_delete(spec: Any, subject: Any, count: Any, action: str) -> None:
        client.flushall()
        watch(lambda: limiter.overrides.set(RATES[0], "s", limit=9), lasting=OVERRIDE_KEY)
        if action == "get":
            watch(lambda: limiter.overrides.get(spec, subject), lasting=OVERRIDE_KEY)
        elif action == "delete":
            watch(lambda: limiter.overrides.delete(spec, subject), lasting=OVERRIDE_KEY)
        else:
            watch(lambda: limiter.overrides.list(spec, count=count), lasting=OVERRIDE_KEY)

    read_or_delete()


def test_reserve_settle_and_release_take_anything(client: redis.Redis, watch: Watch) -> None:
    limiter = Limiter(client)

    @fuzz(max_examples=150)
    @given(
        cap=valid_or(st.sampled_from(CAPS + RATES[:1])),
        subject=subjects,
        estimate=amounts,
        ttl=valid_or(
            st.sampled_from([timedelta(minutes=5), timedelta(days=366)]),
        ),
        request_id=request_ids,
        settle=st.booleans(),
        actual=amounts,
    )
    # TypeError from hashing a signalling NaN, in reserve and in settle.
    @example(
        cap=CAPS[0],
        subject="s",
        estimate=Decimal("sNaN"),
        ttl=timedelta(minutes=5),
        request_id=None,
        settle=False,
        actual=Decimal(1),
    )
    @example(
        cap=CAPS[0],
        subject="s",
        estimate=Decimal(1),
        ttl=timedelta(minutes=5),
        request_id=None,
        settle=True,
        actual=Decimal("-sNaN"),
    )
    def reserve(
        cap: Any,
        subject: Any,
        estimate: Any,
        ttl: Any,
        request_id: Any,
        settle: bool,
        actual: Any,
    ) -> None:
        client.flushall()
        held = watch(
            lambda: limiter.reserve(cap, subject, estimate, ttl=ttl, request_id=request_id)
        )
        if isinstance(held, Refused):
            return
        watch(lambda: held.settle(actual) if settle else held.release())
        watch(held.release)

    reserve()


def test_reserve_on_rate_limits_takes_anything_and_writes_nothing_when_refusing(
    client: redis.Redis, watch: Watch
) -> None:
    # Token estimates on every algorithm: a sliding log refuses, saying why;
    # the others hold, settle (past the limit too) and release. The hold is
    # also taken through acquire, where its TTL is Hit's hold.
    limiter = Limiter(client)
    units = valid_or(st.integers(0, 8))

    @fuzz(max_examples=150)
    @given(
        limit=valid_or(st.sampled_from(RATES)),
        subject=subjects,
        estimate=units,
        ttl=mostly(
            st.sampled_from([timedelta(seconds=1), timedelta(minutes=5), timedelta(days=366)]),
            st.one_of(durations, anything()),
        ),
        request_id=request_ids,
        through_acquire=st.booleans(),
        settle=st.booleans(),
        actual=units,
    )
    @example(
        limit=RATES[0],
        subject="s",
        estimate=-1,
        ttl=timedelta(minutes=5),
        request_id=None,
        through_acquire=False,
        settle=True,
        actual=1,
    )
    @example(
        limit=RATES[0],
        subject="s",
        estimate=0,
        ttl=None,
        request_id=None,
        through_acquire=False,
        settle=False,
        actual=0,
    )
    @example(
        limit=RATES[3],
        subject="s",
        estimate=1,
        ttl=timedelta(0),
        request_id=None,
        through_acquire=True,
        settle=True,
        actual=10**5000,
    )
    def reserve(
        limit: Any,
        subject: Any,
        estimate: Any,
        ttl: Any,
        request_id: Any,
        through_acquire: bool,
        settle: bool,
        actual: Any,
    ) -> None:
        client.flushall()
        if through_acquire:
            acquired = watch(lambda: limiter.acquire([Hit(limit, subject, estimate, hold=ttl)]))
            if isinstance(acquired, Refused) or not acquired.allowed:
                return
            if ttl is None:
                # A Hit's hold of None is a plain charge, not a reservation.
                assert acquired.reservations == ()
                return
            (held,) = acquired.reservations
        else:
            held = watch(
                lambda: limiter.reserve(limit, subject, estimate, ttl=ttl, request_id=request_id)
            )
            if isinstance(held, Refused):
                return
        if isinstance(limit, RateLimit) and limit.algorithm == "sliding_log":
            raise AssertionError("a sliding log took a reservation")
        if not held.allowed:
            return
        outcome = watch(lambda: held.settle(actual) if settle else held.release())
        if not isinstance(outcome, Refused):
            assert type(outcome.charged) is int
        watch(held.release)

    reserve()


def test_lease_renew_and_release_take_anything(client: redis.Redis, watch: Watch) -> None:
    limiter = Limiter(client)

    @fuzz(max_examples=100)
    @given(
        limit=valid_or(st.sampled_from(SLOTS + RATES[:1])),
        subject=subjects,
        request_id=request_ids,
        renew=st.booleans(),
    )
    def lease(limit: Any, subject: Any, request_id: Any, renew: bool) -> None:
        client.flushall()
        taken = watch(
            lambda: limiter.lease(limit, subject, raise_on_deny=False, request_id=request_id)
        )
        if isinstance(taken, Refused):
            return
        if renew:
            watch(taken.renew)
        watch(taken.release)

    lease()


# --------------------------------------------------------------------------
# Cache, sessions and the seed's client
# --------------------------------------------------------------------------

CACHE_OPERATIONS = ("get", "set", "delete", "touch", "get_or_set", "key")


def key_parts() -> st.SearchStrategy[object]:
    keys = st.sampled_from(["acme.com", ("acme.com", "9f86d081"), ["a", "b"], ("x" * 256,) * 16])
    odd = st.one_of(texts, st.lists(texts, max_size=18), st.lists(texts, max_size=3).map(tuple))
    return mostly(keys, st.one_of(odd, anything()), one_in=3)


def test_cache_takes_anything_and_every_entry_expires(client: redis.Redis, watch: Watch) -> None:
    @fuzz(max_examples=200)
    @given(
        name=valid_or(st.sampled_from(["enrichment", "dataforseo"])),
        ttl=valid_or(st.sampled_from([timedelta(seconds=30), timedelta(days=3_650)])),
        model=valid_or(st.sampled_from([None, Profile])),
        version=valid_or(st.just("v1")),
        wait=valid_or(st.just(timedelta(milliseconds=20))),
        lock_ttl=valid_or(st.just(timedelta(seconds=10))),
        operation=st.sampled_from(CACHE_OPERATIONS),
        parts=key_parts(),
        value=valid_or(st.sampled_from([Profile(name="acme"), b"raw", "text"])),
        call_wait=valid_or(st.sampled_from([None, timedelta(0)])),
        call_lock_ttl=valid_or(st.sampled_from([None, timedelta(days=1)])),
    )
    # A lone surrogate failed inside redis-py as UnicodeEncodeError.
    @example(
        name="raw",
        ttl=timedelta(seconds=30),
        model=None,
        version="v1",
        wait=timedelta(0),
        lock_ttl=timedelta(seconds=1),
        operation="set",
        parts="k",
        value="caf\udce9",
        call_wait=None,
        call_lock_ttl=None,
    )
    def cache(
        name: Any,
        ttl: Any,
        model: Any,
        version: Any,
        wait: Any,
        lock_ttl: Any,
        operation: str,
        parts: Any,
        value: Any,
        call_wait: Any,
        call_lock_ttl: Any,
    ) -> None:
        client.flushall()
        category = watch(lambda: Category(name, ttl=ttl, model=model))
        store = watch(lambda: Cache(client, version=version, wait=wait, lock_ttl=lock_ttl))
        if isinstance(category, Refused) or isinstance(store, Refused):
            return
        calls: dict[str, Callable[[], Any]] = {
            "get": lambda: store.get(category, parts),
            "set": lambda: store.set(category, parts, value),
            "delete": lambda: store.delete(category, parts),
            "touch": lambda: store.touch(category, parts),
            "get_or_set": lambda: store.get_or_set(
                category, parts, lambda: value, wait=call_wait, lock_ttl=call_lock_ttl
            ),
            "key": lambda: store.key(category, parts),
        }
        watch(calls[operation])

    cache()


CREATED = "the id create returned"


def test_sessions_take_anything_and_every_session_expires(
    client: redis.Redis, watch: Watch
) -> None:
    @fuzz(max_examples=150)
    @given(
        ttl=valid_or(st.sampled_from([timedelta(hours=1), timedelta(days=3_650)])),
        model=valid_or(st.sampled_from([None, Profile])),
        data=valid_or(st.sampled_from([Profile(name="alice"), b"raw", "text"])),
        operation=st.sampled_from(["get", "update", "delete"]),
        session_id=valid_or(st.sampled_from([CREATED, "a" * 43])),
        update=valid_or(st.sampled_from([Profile(name="bob"), b"raw"])),
    )
    def session(
        ttl: Any, model: Any, data: Any, operation: str, session_id: Any, update: Any
    ) -> None:
        client.flushall()
        sessions = watch(lambda: SessionStore(client, ttl=ttl, model=model))
        if isinstance(sessions, Refused):
            return
        created = watch(lambda: sessions.create(data))
        if session_id is CREATED:
            session_id = created
        calls: dict[str, Callable[[], Any]] = {
            "get": lambda: sessions.get(session_id),
            "update": lambda: sessions.update(session_id, update),
            "delete": lambda: sessions.delete(session_id),
        }
        watch(calls[operation])

    session()


SEED_OPERATIONS = (
    "check_rate_limit",
    "increment_rate_limit",
    "try_rate_limit",
    "check_ai_spend",
    "record_ai_spend",
    "try_ai_spend",
)


@pytest.fixture
def runner() -> Iterator[asyncio.Runner]:
    with asyncio.Runner() as runner:
        yield runner


def test_the_seed_client_takes_anything_and_every_key_expires(
    fuzz_server: Server, client: redis.Redis, watch: Watch, runner: asyncio.Runner
) -> None:
    @fuzz(max_examples=120)
    @given(
        tz=valid_or(st.sampled_from(["UTC", "Australia/Sydney"])),
        operation=st.sampled_from(SEED_OPERATIONS),
        resource_type=valid_or(st.just("enrichment")),
        resource_id=valid_or(st.just("acme.com")),
        limit=valid_or(st.integers(0, 3)),
        client_id=valid_or(st.just(UUID("9f2c1a4e-0000-4000-8000-000000000042"))),
        amount=valid_or(st.one_of(money, st.floats(0, 3))),
    )
    # InvalidOperation from Decimal(repr(amount)) of a float subclass.
    @example(
        tz="UTC",
        operation="try_ai_spend",
        resource_type="enrichment",
        resource_id="acme.com",
        limit=1,
        client_id="client-1",
        amount=Float64(0.37),
    )
    def seed(
        tz: Any,
        operation: str,
        resource_type: Any,
        resource_id: Any,
        limit: Any,
        client_id: Any,
        amount: Any,
    ) -> None:
        client.flushall()
        made = watch(lambda: RedisClient(fuzz_server.url, tz=tz))
        if isinstance(made, Refused):
            return
        seed: RedisClient = made
        calls: dict[str, Callable[[], Any]] = {
            "check_rate_limit": lambda: seed.check_rate_limit(resource_type, resource_id, limit),
            "increment_rate_limit": lambda: seed.increment_rate_limit(resource_type, resource_id),
            "try_rate_limit": lambda: seed.try_rate_limit(resource_type, resource_id, limit),
            "check_ai_spend": lambda: seed.check_ai_spend(client_id),
            "record_ai_spend": lambda: seed.record_ai_spend(client_id, amount),
            "try_ai_spend": lambda: seed.try_ai_spend(client_id, amount),
        }
        try:
            watch(lambda: runner.run(calls[operation]()))
        finally:
            runner.run(seed.close())

    seed()


# --------------------------------------------------------------------------
# Provider headers: they come off the network, so nothing escapes at all
# --------------------------------------------------------------------------

PROVIDER_NAMES = (
    *(f"x-ratelimit-{part}-{quota}" for part in ("limit", "remaining", "reset") for quota in
      ("requests", "tokens", "images")),
    *(f"anthropic-ratelimit-{quota}-{part}" for part in ("limit", "remaining", "reset") for quota in
      ("requests", "tokens", "input-tokens", "output-tokens", "priority")),
    "RateLimit", "RateLimit-Policy", "Retry-After", "retry-after-ms", "X-RATELIMIT-LIMIT-TOKENS",
    "ratelimit-limit", "content-type", "", "x" * 65,
)  # fmt: skip
PROVIDER_VALUES = (
    "0", "60", "150000", "9007199254740991", "9007199254740992", "-1", "+5", "1e999", "NaN",
    "inf", "6m0s", "1s", "20ms", "1.5s", "2h3m4.5s", "0s", "500\u00b5s", "24h0m0.000001s",
    "2562047h47m16.854775807s", "9" * 200 + "h", "1." + "0" * 200 + "1s",
    "2025-08-21T12:41:00Z", "2025-08-21T12:41:00.9999999+23:59", "9999-12-31T23:59:59.9999999Z",
    "0001-01-01T00:00:00-23:59", "2025-08-21T23:59:60Z", "Thu, 21 Aug 2025 12:41:00 GMT",
    "Fri, 31 Dec 9999 23:59:59 GMT", "Mon, 01 Jan 0001 00:00:00 GMT", "Thu Aug 21 12:41:00 2025",
    '"day";r=100;t=36000', '"day";q=5000;w=86400, "hour";q=1000;w=3600',
    '"t";q=9;qu="tokens";w=60', '"t";q=9;qu="content-bytes"', '"p";r=1;t=86401',
    '"p";r=999999999999999;t=-1', '"p";q=1;w=999999999999999', '("a" "b");r=1',
    '%"p";r=1', "@1;r=1", '"p";r=1, "p";r=2', '"p";r=1,', "x" * 256, "x" * 257,
)  # fmt: skip
plausible_values = st.sampled_from(PROVIDER_VALUES)
header_values = mostly(
    st.one_of(plausible_values, plausible_values.map(str.encode)),
    st.one_of(
        st.text(alphabet='0123456789.;=,:" -+hmsuµTZ@%?*()qrtwpk\t\x00é\ud800', max_size=24),
        st.binary(max_size=24),
        anything(huge_ints=False),
    ),
    one_in=3,
)
known_names = st.sampled_from(PROVIDER_NAMES)
header_names = mostly(
    st.one_of(known_names, known_names.map(str.swapcase), known_names.map(str.encode)), texts
)
header_pairs = st.lists(
    mostly(st.tuples(header_names, header_values), anything(huge_ints=False)), max_size=12
)
header_objects = mostly(
    st.one_of(
        header_pairs,
        st.dictionaries(header_names, header_values, max_size=12),
        header_pairs.map(iter),
    ),
    st.one_of(
        st.just([("x-ratelimit-remaining-tokens", "1")] * (MAX_FIELDS + 1)),
        st.just([("RateLimit", '"p";r=1;t=1, ' * 20)] * MAX_FIELDS),
        anything(),
    ),
)
AWARE_NOWS = (
    datetime(2025, 8, 21, 12, 40, 30, tzinfo=UTC),
    datetime.min.replace(tzinfo=UTC),
    datetime.max.replace(tzinfo=UTC),
    datetime(2025, 8, 21, 12, 40, 30, tzinfo=timezone(timedelta(hours=-23, minutes=-59))),
)


class Messages(logging.Handler):
    """Formats every record, so a log line that cannot be built fails the test."""

    def emit(self, record: logging.LogRecord) -> None:
        assert len(record.getMessage()) < LONGEST_MESSAGE


def test_provider_headers_never_raise_and_every_figure_is_in_bounds() -> None:
    logger = logging.getLogger("atomlimit.provider_headers")
    handler = Messages()

    @fuzz(max_examples=300)
    @given(headers=header_objects, now=st.one_of(st.none(), st.sampled_from(AWARE_NOWS)))
    @example(headers=[("Retry-After", "Fri, 31 Dec 9999 23:59:59 GMT")], now=AWARE_NOWS[1])
    @example(headers=[("RateLimit", '"p";r=1;t=86400')], now=None)
    def reads(headers: object, now: datetime | None) -> None:
        report = read_headers(headers, now=now)

        assert type(report) is ProviderReport
        quotas = [reading.quota for reading in report.readings]
        assert quotas == [quota for quota in QUOTAS if quota in quotas]  # one each, in order
        for reading in report.readings:
            counts = (reading.limit, reading.remaining)
            assert all(n is None or (type(n) is int and 0 <= n <= MAX_UNITS) for n in counts)
            assert reading.reset_after is None or timedelta(0) <= reading.reset_after <= MAX_RESET
            assert reading.window is None or timedelta(0) < reading.window <= MAX_WINDOW
            assert (*counts, reading.reset_after) != (None, None, None)
        after = report.retry_after
        assert after is None or timedelta(0) <= after <= MAX_RETRY_AFTER

    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        reads()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)


# Policy files
# --------------------------------------------------------------------------

POLICY_FIELDS = (
    "kind",
    "rate",
    "limit",
    "window",
    "tz",
    "algorithm",
    "burst",
    "max_log",
    "shadow",
    "currency",
    "unit",
    "lease",
    "wait_replicas",
    "wait_timeout",
    "on_backend_error",
    "name",
    "limt",
)
POLICY_VALUES = st.one_of(
    st.sampled_from(
        [
            "rate_limit",
            "spend_cap",
            "concurrency",
            "quota",
            "5/minute",
            "1000/day@Australia/Sydney",
            "5/fortnight",
            "minute",
            "month",
            "30s",
            "15 minutes",
            "0s",
            "400 days",
            "Australia/Sydney",
            "gcra",
            "sliding_log",
            "AUD",
            "0.01",
            "1E+999999999",
            "100.00",
            "sNaN",
            "allow",
            "allow_unmetered_spend",
            "deny",
        ]
    ),
    st.integers(-3, 30),
    st.sampled_from(INT_EDGES),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.text(max_size=12),
    st.lists(st.integers(), max_size=2),
)
toml_keys = st.one_of(
    st.sampled_from(["api", "login", "a b", "", "é", "x" * 257]), st.text(max_size=6)
)


def toml_value(value: object) -> str:
    """``value`` written as TOML: enough of it for these tests."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    return toml_key(str(value))


def toml_key(text: str) -> str:
    escaped = "".join(
        char if char.isprintable() and char not in '"\\' else f"\\u{ord(char):04x}" for char in text
    )
    return f'"{escaped}"'


POLICY_TABLES: tuple[dict[str, object], ...] = (
    {"rate": "5/minute", "on_backend_error": "allow"},
    {"limit": 5, "window": "15 minutes", "algorithm": "sliding_log"},
    {"kind": "spend_cap", "limit": "100.00", "currency": "AUD", "window": "day", "tz": "UTC"},
    {"kind": "concurrency", "limit": 3, "lease": "60s"},
)
hostile_fields = st.dictionaries(st.sampled_from(POLICY_FIELDS), POLICY_VALUES, max_size=3)


@st.composite
def policy_files(draw: st.DrawFn) -> str:
    """A policy file: mostly good tables, some with hostile fields, names or stray lines."""
    lines = []
    if draw(st.integers(0, 4)) == 0:
        lines += ["[defaults]", f"on_backend_error = {toml_value(draw(POLICY_VALUES))}"]
    names = draw(st.lists(mostly(st.sampled_from(["api", "login", "ai"]), toml_keys), max_size=4))
    tables = {}
    for name in dict.fromkeys(names):
        table = {
            **draw(st.sampled_from(POLICY_TABLES)),
            **draw(mostly(st.just({}), hostile_fields)),
        }
        tables[name] = table
        lines.append(f"[limits.{toml_key(name)}]")
        lines += [f"{key} = {toml_value(value)}" for key, value in table.items()]
    for tier in draw(st.lists(mostly(st.sampled_from(["free", "pro"]), toml_keys), max_size=2)):
        name = draw(mostly(st.sampled_from(list(tables) or ["api"]), toml_keys))
        fields = draw(mostly(st.just({"limit": draw(st.integers(1, 9))}), hostile_fields))
        lines.append(f"[tiers.{toml_key(tier)}.{toml_key(name)}]")
        lines += [f"{key} = {toml_value(value)}" for key, value in fields.items()]
    stray = st.sampled_from(["[", "x =", "]]", "a.b.c = 1", "[other]", "limits = 3"])
    lines += draw(mostly(st.just([]), st.lists(stray, min_size=1, max_size=2)))
    return "\n".join(lines) + "\n"


def check_policies(call: Callable[[], Any]) -> bool:
    """Only InvalidInput escapes, with a short message; an accepted file holds only specs.

    Whether the file was accepted."""
    refused = ""
    try:
        policies = call()
    except InvalidInput as err:
        refused = str(err)
    assert len(refused) <= LONGEST_MESSAGE, f"a {len(refused)}-character message"
    if refused:
        return False
    for tier in (policies, *policies.tiers.values()):
        assert all(isinstance(spec, Spec) and spec.name == name for name, spec in tier.items())
    return True


def test_policy_files_of_any_shape_give_specs_or_invalid_input() -> None:
    @fuzz(max_examples=300)
    @given(text=policy_files())
    @example(text='[limits.api]\nrate = "5/minute"\n[tiers.pro.api]\nlimit = 1e308\n')
    @example(text='[limits.ai]\nkind = "spend_cap"\nlimit = "1E+999999999"\ncurrency = "AUD"\n')
    @example(text="[limits.api]\nlimit = " + str(2**63 - 1) + '\nwindow = "day"\n')
    def parse_it(text: str) -> None:
        check_policies(lambda: parse(text))

    parse_it()


def test_any_text_or_bytes_in_a_policy_file_gives_invalid_input_at_most(tmp_path: Any) -> None:
    path = tmp_path / "policies.toml"

    @fuzz(max_examples=200)
    @given(data=st.one_of(st.binary(max_size=64), st.text(max_size=64).map(str.encode)))
    @example(data=b"\xff\xfe")
    @example(data=b"\xef\xbb\xbf[limits.api]\nrate = '1/day'\n")
    @example(data=b"x = " + b"[" * 5_000)
    @example(data=b"x = " + b"{a = " * 5_000)
    @example(data=b"a." * 20_000 + b"b = 1")
    @example(data=b"# " + b"x" * (1024 * 1024))
    @example(data=b"[limits]\n" + b"".join(b"l%d = {rate = '1/day'}\n" % i for i in range(1_001)))
    def load_it(data: bytes) -> None:
        path.write_bytes(data)
        check_policies(lambda: load(path))

    load_it()


def test_the_django_decorator_takes_anything_when_it_decorates(watch: Watch) -> None:
    from atomlimit.django import limit

    @fuzz(max_examples=100)
    @given(
        rates=st.lists(
            mostly(st.sampled_from(["5/minute", "10/d", "3/10s"]), anything()), max_size=3
        ),
        group=valid_or(st.text(max_size=300)),
        methods=valid_or(st.lists(st.sampled_from(["GET", "post", "PUT"]), min_size=1)),
        block=valid_or(st.booleans()),
        key=valid_or(st.just(lambda request: "s")),
    )
    def decorate(rates: list[Any], group: Any, methods: Any, block: Any, key: Any) -> None:
        decorator = watch(lambda: limit(*rates, key=key, group=group, methods=methods, block=block))
        if isinstance(decorator, Refused):
            return
        view = watch(lambda: decorator(lambda request: "ran"))
        assert isinstance(view, Refused) or callable(view)

    decorate()


def test_celery_limited_takes_anything_when_it_decorates(client: redis.Redis, watch: Watch) -> None:
    from atomlimit.celery import TaskLimiter

    limits = TaskLimiter(lambda: Limiter(client))
    specs = st.lists(st.sampled_from(RATES + CAPS + SLOTS), min_size=1, max_size=3)

    @fuzz(max_examples=100)
    @given(
        chosen=mostly(specs, st.lists(anything(), max_size=3)),
        subject=valid_or(st.sampled_from([None, "s", lambda *args: "s"])),
        cost=valid_or(st.sampled_from([1, 2, lambda *args: 1])),
        estimate=valid_or(st.sampled_from([None, Decimal("0.50"), 1])),
        hold=valid_or(st.just(timedelta(minutes=5))),
        max_countdown=valid_or(st.one_of(st.none(), durations)),
        lease_retry=valid_or(durations),
        denials_use_retries=valid_or(st.booleans()),
    )
    def limited(chosen: list[Any], **options: Any) -> None:
        made = watch(lambda: limits.limited(*chosen, **options))
        if isinstance(made, Refused):
            return
        assert made.limits == tuple(chosen)
        assert callable(made(lambda task: None))

    limited()
