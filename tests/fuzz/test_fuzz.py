"""Hostile input against every public entry point, on a real server.

Each call takes a mix of valid and hostile values: huge and tiny Decimals,
huge ints, floats, bools, NaN, text with control characters and key
separators, very long text, extreme durations and values of the wrong type.
Whatever the input:

- nothing but InvalidInput escapes: a valid call returns its result, and a
  refusal's message stays short;
- a refused call writes nothing: DBSIZE is the same after it;
- after an accepted call, every key on the server has an expiry.

Only the public API is used. The ``ci`` profile replays the same examples on
every run; each test sets its own ``max_examples`` so that the whole file
stays well under a minute. An input that once broke one of the three rules
is kept as an ``@example``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Any, NamedTuple, NoReturn
from uuid import UUID

import pytest
import redis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from servers import Server

from atomlimit import (
    Breaker,
    Concurrency,
    Hit,
    InvalidInput,
    Limiter,
    LimitExceeded,
    RateLimit,
    RequestIdReused,
    Spec,
    SpendCap,
)
from atomlimit.cache import Cache, Category
from atomlimit.compat import RedisClient
from atomlimit.observe import Observer
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

    def __call__(self, call: Callable[[], Any]) -> Any:
        """The call's result, or Refused; any other exception fails the test."""
        before = self.client.dbsize()
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
            self.every_key_expires()
            return result
        message = str(refused.error)
        assert len(message) <= LONGEST_MESSAGE, f"a {len(message)}-character message"
        assert self.client.dbsize() == before, f"refused, yet written: {message}"
        return refused

    def every_key_expires(self) -> None:
        keys = list(self.client.scan_iter(count=1_000))
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
    # "allow" is refused by a SpendCap, "allow_unmetered_spend" by the others.
    "on_backend_error": st.sampled_from(["raise", "deny", "allow", "allow_unmetered_spend"]),
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
    ),
    SpendCap: ("name", "window", "tz", "currency", "unit", "shadow", "on_backend_error"),
    Concurrency: ("name", "lease", "on_backend_error"),
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
    )
    def configure(
        prefix: Any,
        request_ttl: Any,
        retry_ttl: Any,
        time_source: Any,
        breaker: Any,
        observers: Any,
        strict: Any,
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
