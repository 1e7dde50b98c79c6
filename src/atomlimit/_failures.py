"""Which errors are backend failures, and which say the server is out of reach.

A limit's failure policy applies to backend failures only; the breaker
counts only outages. Both are decided from the exception alone, so they are
tested with plain values.
"""

from __future__ import annotations

import errno

from redis.exceptions import (
    ClusterDownError,
    RedisClusterException,
    RedisError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from atomlimit._errors import BackendError

_CHAIN = 8
"""Causes followed when looking for a refused connection."""

# Failures that say the server cannot be reached or did not answer in time.
# An error reply (a wrong type, out of memory) comes fast from a server that
# works, and one bad key must not stop every call, so it does not count.
_OUTAGES = (
    RedisConnectionError,
    RedisTimeoutError,
    ClusterDownError,
    TryAgainError,
    OSError,
    TimeoutError,
)


def outage(error: BackendError) -> tuple[bool, bool]:
    """Whether ``error`` counts against the breaker, and whether the server
    refused the connection (which opens it at once)."""
    cause: BaseException | None = error.__cause__
    counts = isinstance(cause, _OUTAGES)
    refused = False
    for _ in range(_CHAIN):
        if cause is None:
            break
        if isinstance(cause, ConnectionRefusedError) or (
            isinstance(cause, OSError) and cause.errno == errno.ECONNREFUSED
        ):
            refused = True
            break
        cause = cause.__cause__ or cause.__context__
    return counts or refused, refused


def backend_failure(err: BaseException, operation: str) -> BackendError | None:
    """``err`` as a BackendError if it is a backend failure, else None.

    The runners wrap what redis-py raises; a few paths (a cluster client
    learning its layout) let redis-py's own errors through, and a deadline
    arrives as a TimeoutError, so these are wrapped here, cause chained.
    """
    if isinstance(err, BackendError):
        return err
    if isinstance(err, RedisError | RedisClusterException | OSError):
        wrapped = BackendError(f"{operation}: {type(err).__name__}: {err}", applied="unknown")
        wrapped.__cause__ = err
        return wrapped
    return None
