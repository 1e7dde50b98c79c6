"""The outcome of one limiter call: a Decision, or a Settlement for a reservation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Generic, Literal, NamedTuple

from atomlimit._header_fields import checked_fields
from atomlimit._money import Amount

if TYPE_CHECKING:
    from atomlimit.specs import Spec

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_FIELDS = (
    "allowed",
    "limit",
    "used",
    "remaining",
    "reset_at",
    "retry_after",
    "granted",
    "held",
    "shadow_denied",
    "spec",
    "degraded",
    "cause",
    "cached",
    "limit_source",
)
_COMPARED = tuple(i for i, name in enumerate(_FIELDS) if name != "cause")


class Decision(Generic[Amount]):
    """What a limit decided, and where the subject stands after it.

    Immutable. Amounts are ``int`` for a [`RateLimit`][atomlimit.RateLimit] and
    exact ``Decimal`` in the cap's currency for a [`SpendCap`][atomlimit.SpendCap].
    ``bool(decision)`` is ``decision.allowed``.
    """

    # The times arrive as integer microseconds and become a datetime and a
    # timedelta only when read: most callers look at `allowed` alone, and
    # building both on every decision was a measurable part of its cost.
    __slots__ = (
        "_reset",
        "_retry",
        "allowed",
        "cached",
        "cause",
        "degraded",
        "granted",
        "held",
        "limit",
        "limit_source",
        "remaining",
        "shadow_denied",
        "spec",
        "used",
    )

    _reset: datetime | int
    _retry: timedelta | int | None
    allowed: bool
    """Whether the request was admitted (for ``peek``: would be)."""
    limit: Amount
    """The limit in force (for gcra: the burst, what can pass at once)."""
    limit_source: Literal["spec", "override"]
    """Where ``limit`` came from: the spec, or a per-subject override kept on
    the server ([`Overrides`][atomlimit.Overrides])."""
    used: Amount
    """Used in the current window: after this hit if allowed, unchanged if denied."""
    remaining: Amount
    """``limit - used - held``, never below zero."""
    granted: Amount
    """What this call charged: the cost, less with ``partial=True``, zero when
    denied and for ``peek``."""
    held: Amount
    """Held by open reservations (spend caps only; zero otherwise). Counts
    against the limit alongside ``used``."""
    shadow_denied: bool
    """A shadow limit let this request through although it was over."""
    spec: Spec[Amount] | None
    """The limit that decided."""
    degraded: bool
    """Decided without the server, by the limit's failure policy."""
    cause: BaseException | None
    """Why a degraded decision was made without the server."""
    cached: bool
    """A denial answered from the limiter's [`DenyCache`][atomlimit.DenyCache],
    without the server."""

    def __init__(
        self,
        allowed: bool,
        limit: Amount,
        used: Amount,
        remaining: Amount,
        reset_at: datetime,
        retry_after: timedelta | None,
        granted: Amount,
        held: Amount,
        shadow_denied: bool = False,
        spec: Spec[Amount] | None = None,
        degraded: bool = False,
        cause: BaseException | None = None,
        cached: bool = False,
        limit_source: Literal["spec", "override"] = "spec",
    ) -> None:
        _init(self, allowed, limit, used, remaining, reset_at, retry_after, granted, held)
        _LIMIT_SOURCE(self, limit_source)
        _SHADOW(self, shadow_denied)
        _SPEC(self, spec)
        _DEGRADED(self, degraded)
        _CAUSE(self, cause)
        _CACHED(self, cached)

    @property
    def reset_at(self) -> datetime:
        """When usage is back to zero with no new traffic, an aware UTC
        datetime: the end of the current window for a fixed window."""
        reset = self._reset
        if isinstance(reset, int):
            reset = _EPOCH + timedelta(microseconds=reset)
            _RESET(self, reset)
        return reset

    @property
    def retry_after(self) -> timedelta | None:
        """How long until the same request could pass; ``None`` when allowed,
        or when the cost exceeds the limit and can never pass."""
        retry = self._retry
        if isinstance(retry, int):
            retry = timedelta(microseconds=retry)
            _RETRY(self, retry)
        return retry

    def __bool__(self) -> bool:
        return self.allowed

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        # The cause is an exception, equal only to itself: two degraded
        # decisions alike in every value are equal whatever their causes.
        return self._compared() == other._compared()

    def __hash__(self) -> int:
        return hash(self._compared())

    def __repr__(self) -> str:
        values = zip(_FIELDS, self._values(), strict=True)
        shown = ", ".join(f"{name}={value!r}" for name, value in values)
        return f"Decision({shown})"

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Decision is immutable; cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"Decision is immutable; cannot delete {name!r}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (Decision, self._values())

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in _FIELDS)

    def _compared(self) -> tuple[Any, ...]:
        values = self._values()
        return tuple(values[i] for i in _COMPARED)

    def headers(self, *, now: datetime | None = None) -> dict[str, str]:
        """The ``RateLimit-Policy`` and ``RateLimit`` header fields for this decision.

        They follow draft-ietf-httpapi-ratelimit-headers-11, as
        [`atomlimit.headers.rate_limit_headers`][atomlimit.headers.rate_limit_headers] builds them
        (which also takes the several decisions of an acquire). A denial that can be
        retried adds ``Retry-After``, in whole seconds rounded up.

        >>> from atomlimit import Limiter, RateLimit
        >>> api = RateLimit(name="api", limit=100, window=timedelta(seconds=60))
        >>> with Limiter.from_url("redis://127.0.0.1:6380/0") as limiter:
        ...     decision = limiter.hit(api, "client-42")
        >>> decision.headers(now=decision.reset_at - timedelta(seconds=42))
        {'RateLimit-Policy': '"api";q=100;w=60', 'RateLimit': '"api";r=99;t=42'}
        """
        return checked_fields([self], now)

    def as_dict(self) -> dict[str, Any]:
        """This decision as JSON-ready values, for logs and response bodies.

        Times are ISO 8601 strings in UTC, ``retry_after`` is seconds (a
        number, or None), and a spend cap's amounts are decimal strings so
        that no float ever rounds money. ``name`` and ``kind`` say which
        limit decided; ``cause`` is the failure's type name, if any.
        """
        spec = self.spec
        retry = self.retry_after
        return {
            "name": None if spec is None else spec.name,
            "kind": None if spec is None else type(spec).__name__,
            "currency": getattr(spec, "currency", None),
            "allowed": self.allowed,
            "limit": _amount(self.limit),
            "used": _amount(self.used),
            "remaining": _amount(self.remaining),
            "granted": _amount(self.granted),
            "held": _amount(self.held),
            "reset_at": self.reset_at.isoformat(),
            "retry_after": None if retry is None else retry.total_seconds(),
            "shadow_denied": self.shadow_denied,
            "degraded": self.degraded,
            "cause": None if self.cause is None else type(self.cause).__name__,
            "cached": self.cached,
            "limit_source": self.limit_source,
        }


SettleStatus = Literal[
    "settled",
    "already_settled",
    "settled_after_release",
    "settled_after_expiry",
    "released",
    "already_released",
    "expired",
]
"""Which case a settle or release met (docs/reservations.md)."""


class Settlement(NamedTuple, Generic[Amount]):
    """What settling or releasing a reservation did.

    ``status`` says which case applied; ``charged`` is what this call
    charged (zero for a release, or for a settle that was already done), in
    the limit's own amount: a `Decimal` for a spend cap, an int for a rate
    limit; ``decision`` is the limit after it.
    """

    status: SettleStatus
    charged: Amount
    decision: Decision[Amount]


def _amount(value: Any) -> int | str:
    # Fixed-point text: str() of a Decimal may use an exponent ("1E+2").
    return format(value, "f") if isinstance(value, Decimal) else value


def decided(
    allowed: bool,
    limit: Any,
    used: Any,
    remaining: Any,
    reset_us: int,
    retry_us: int | None,
    granted: Any,
    held: Any,
    shadow_denied: bool,
    spec: Spec[Any],
    limit_source: Literal["spec", "override"] = "spec",
    cached: bool = False,
) -> Decision[Any]:
    """A Decision from the integers a reply carries, built without checks.

    Times are epoch microseconds (``reset_us``) and a microsecond count
    (``retry_us``); they turn into a datetime and a timedelta when read.
    ``limit_source``: whose limit is in force; ``cached``: answered from the
    deny cache.
    """
    # Filled as a plain object of the same slots, then made a Decision
    # (`_Open`): a third of the cost of writing each slot through its guard.
    d: Any = _Open()
    d.allowed = allowed
    d.limit = limit
    d.used = used
    d.remaining = remaining
    d._reset = reset_us
    d._retry = retry_us
    d.granted = granted
    d.held = held
    d.shadow_denied = shadow_denied
    d.spec = spec
    d.degraded = False
    d.cause = None
    d.limit_source = limit_source
    d.cached = cached
    d.__class__ = Decision
    return d  # type: ignore[no-any-return]


class _Open(Generic[Amount]):
    """A Decision's exact layout without its write guard.

    Filled with plain attribute stores and then turned into a Decision by
    class assignment, which Python allows between classes of one layout: a
    third of the cost of writing the fourteen slots through their
    descriptors, which was most of what a cached denial cost.
    """

    __slots__ = Decision.__slots__


def denied_again(
    limit: Any,
    used: Any,
    remaining: Any,
    reset_us: int,
    retry_us: int | None,
    granted: Any,
    held: Any,
    spec: Spec[Any],
    limit_source: Literal["spec", "override"] = "spec",
) -> Decision[Any]:
    """A denial answered from the deny cache: ``decided(False, limit, used,
    remaining, reset_us, retry_us, granted, held, False, spec, limit_source,
    cached=True)``."""
    return decided(
        False, limit, used, remaining, reset_us, retry_us, granted, held, False, spec,
        limit_source, cached=True,
    )  # fmt: skip


# Writing through the slots' own descriptors skips __setattr__, which
# refuses every write so that a Decision stays immutable for its users.
_SLOTS = vars(Decision)
_ALLOWED = _SLOTS["allowed"].__set__
_LIMIT = _SLOTS["limit"].__set__
_LIMIT_SOURCE = _SLOTS["limit_source"].__set__
_USED = _SLOTS["used"].__set__
_REMAINING = _SLOTS["remaining"].__set__
_RESET = _SLOTS["_reset"].__set__
_RETRY = _SLOTS["_retry"].__set__
_GRANTED = _SLOTS["granted"].__set__
_HELD = _SLOTS["held"].__set__
_SHADOW = _SLOTS["shadow_denied"].__set__
_SPEC = _SLOTS["spec"].__set__
_DEGRADED = _SLOTS["degraded"].__set__
_CAUSE = _SLOTS["cause"].__set__
_CACHED = _SLOTS["cached"].__set__


def _init(
    decision: Decision[Any],
    allowed: bool,
    limit: Any,
    used: Any,
    remaining: Any,
    reset: Any,
    retry: Any,
    granted: Any,
    held: Any,
) -> None:
    _ALLOWED(decision, allowed)
    _LIMIT(decision, limit)
    _USED(decision, used)
    _REMAINING(decision, remaining)
    _RESET(decision, reset)
    _RETRY(decision, retry)
    _GRANTED(decision, granted)
    _HELD(decision, held)
