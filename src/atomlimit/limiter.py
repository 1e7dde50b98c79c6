"""The two thin shells: [`Limiter`][atomlimit.Limiter] (sync) and
[`AsyncLimiter`][atomlimit.AsyncLimiter].

They hand what `atomlimit._engine` plans to a runner from
the runners, through the limiter's guard (`atomlimit._guard`:
circuit breaker, failure policy, observers), and wrap held things in handles
from `atomlimit.holds`; every rule lives in those places, once.
[`AsyncLimiter`][atomlimit.AsyncLimiter] is written in `atomlimit._async.limiter`, and
[`Limiter`][atomlimit.Limiter] is generated from it (``scripts/unasync.py``), so the two
cannot drift apart.
"""

from __future__ import annotations

from atomlimit._async.calls import AsyncModelCall as AsyncModelCall
from atomlimit._async.limiter import AsyncLimiter as AsyncLimiter
from atomlimit._shell import DEFAULT_BREAKER as DEFAULT_BREAKER
from atomlimit._shell import DEFAULT_MAX_CONNECTIONS as DEFAULT_MAX_CONNECTIONS
from atomlimit._shell import DEFAULT_POOL_TIMEOUT as DEFAULT_POOL_TIMEOUT
from atomlimit._shell import MAX_MANY as MAX_MANY
from atomlimit._shell import Clock as Clock
from atomlimit._sync.calls import ModelCall as ModelCall
from atomlimit._sync.limiter import Limiter as Limiter
