"""atomlimit: rate limits and spend caps that stay exact under any concurrency.

Every check-and-charge is one Lua script run on the Redis server, so no
number of concurrent workers can push a limit past its value.

>>> from atomlimit import Limiter, RateLimit
>>> limiter = Limiter.from_url("redis://127.0.0.1:6380/0")
>>> daily = RateLimit(name="enrichment", limit=1000, window="day")
>>> limiter.hit(daily, "client-42").allowed
True
>>> limiter.close()
"""

from atomlimit._async.overrides import AsyncOverrides
from atomlimit._deny_cache import DenyCache
from atomlimit._override_plan import Override
from atomlimit._sync.overrides import Overrides
from atomlimit._version import __version__ as __version__
from atomlimit.breaker import Breaker
from atomlimit.decision import Decision
from atomlimit.errors import (
    AtomlimitError,
    BackendError,
    BreakerOpen,
    InvalidInput,
    LimitExceeded,
    RequestIdReused,
    UnsafeServer,
)
from atomlimit.holds import (
    Acquired,
    AsyncLease,
    AsyncReservation,
    Lease,
    Reservation,
    Settlement,
)
from atomlimit.limiter import AsyncLimiter, AsyncModelCall, Limiter, ModelCall
from atomlimit.specs import Concurrency, Hit, RateLimit, Spec, SpendCap
from atomlimit.upstream import ClientLimits, ProviderReport, Upstream

__all__ = [
    "Acquired",
    "AsyncLease",
    "AsyncLimiter",
    "AsyncModelCall",
    "AsyncOverrides",
    "AsyncReservation",
    "AtomlimitError",
    "BackendError",
    "Breaker",
    "BreakerOpen",
    "ClientLimits",
    "Concurrency",
    "Decision",
    "DenyCache",
    "Hit",
    "InvalidInput",
    "Lease",
    "LimitExceeded",
    "Limiter",
    "ModelCall",
    "Override",
    "Overrides",
    "ProviderReport",
    "RateLimit",
    "RequestIdReused",
    "Reservation",
    "Settlement",
    "Spec",
    "SpendCap",
    "UnsafeServer",
    "Upstream",
]
