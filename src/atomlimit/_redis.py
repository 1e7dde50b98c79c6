"""The one adapter to redis-py: every question put to a client, pool or connection.

The runners and the async lanes send scripts on connections they take from
a client's pool, bypassing redis-py's command layer (see
`atomlimit._sync_runner`). Everything they need from redis-py is here, and
uses only its public API: a pool's ``get_connection``/``release``, a
connection's ``connect``, ``disconnect``, ``send_packed_command``,
``read_response``, ``can_read`` and connect callbacks, a cluster client's
node manager, and the client's own options. No attribute whose name starts
with ``_`` is read or written on any redis-py object (a test walks this
package's syntax trees to keep it so), so a redis-py release that changes its
internals cannot change what atomlimit does.

Two questions the public API answers only indirectly:

- *Has the server closed this idle connection?* A connection that sat idle
  is asked ``can_read`` before anything is written on it: with no reply
  outstanding, anything to read (or the end of the stream, which redis-py
  raises as a ``ConnectionError``) means it must be opened afresh, so that a
  restart, a failover or an idle timeout never swallows a call whose outcome
  nobody could then know. An asyncio connection answers from what the event
  loop has read, so the loop gets one turn to read the socket first.
- *Did redis-py open a connection again behind our back?* A pool reconnects
  a socket the server closed when it hands the connection out. Each
  connection atomlimit uses carries a connect callback (redis-py's hook for
  exactly this), so whoever holds it learns of every connect and checks the
  server again: after a failover the same address may now be a replica.
"""

from __future__ import annotations

import asyncio
import inspect
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import redis
import redis.asyncio
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    BusyLoadingError,
    ClusterDownError,
    MaxConnectionsError,
    MovedError,
    NoScriptError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from atomlimit._errors import InvalidInput

__all__ = [
    "AskError",
    "AsyncClient",
    "AsyncRedisCluster",
    "BusyLoadingError",
    "ClusterDownError",
    "MovedError",
    "NoScriptError",
    "ReadOnlyError",
    "RedisClusterException",
    "RedisConnectionError",
    "RedisError",
    "RedisTimeoutError",
    "ResponseError",
    "SyncClient",
    "TryAgainError",
]

SyncClient = redis.Redis | RedisCluster
AsyncClient = redis.asyncio.Redis | AsyncRedisCluster
SYNC_CLIENTS = (redis.Redis, RedisCluster)
ASYNC_CLIENTS = (redis.asyncio.Redis, AsyncRedisCluster)

FAILURES = (RedisError, OSError)
"""What a connection raises when the server is gone or unreachable."""
ANSWERED = (ResponseError, BusyLoadingError)
"""Error replies: the server answered and the connection is in step. redis-py
raises LOADING as a connection error, though it is a reply."""


# -- clients ---------------------------------------------------------------------


def exhausted(err: BaseException) -> bool:
    """Whether ``err`` is a pool's refusal of a connection past its size.

    redis-py raises MaxConnectionsError for it; older asyncio pools raise a
    plain ConnectionError that says the same.
    """
    return isinstance(err, MaxConnectionsError) or (
        isinstance(err, RedisConnectionError) and str(err) == "Too many connections"
    )


def check_client(client: Any, kinds: tuple[type, ...]) -> Any:
    """``client`` if it is one of ``kinds``; else InvalidInput naming them."""
    if not isinstance(client, kinds):
        names = " or ".join(f"{k.__module__}.{k.__qualname__}" for k in kinds)
        raise InvalidInput(f"client must be a {names}, got {type(client).__name__}")
    check_options(client)
    return client


def from_url(make: Callable[..., Any], url: object, options: dict[str, Any]) -> Any:
    """``make(url, **options)``, a bad URL or option refused as InvalidInput."""
    if not isinstance(url, str):
        raise InvalidInput(f"url must be a str like 'redis://host:6379/0', got {url!r:.80}")
    try:
        # The options are checked with the client, when the limiter is built
        # on it (check_client), as for a client the caller built.
        return make(url, **options)
    except TypeError as err:
        raise _refused(err) from None
    except ValueError as err:
        # redis-py names the accepted schemes; the URL itself may hold a
        # password, so only its scheme is repeated.
        scheme = url.split("://", 1)[0] if "://" in url else "(none)"
        raise InvalidInput(f"url is not a Redis URL (scheme {scheme!r}): {err}") from None


def check_options(client: Any) -> None:
    """Refuse a client whose connections could never be made.

    redis-py passes unknown options through its pool to each connection's
    constructor, so a typo would surface only at the first call, inside a
    task that sends it. One connection object is built here, unconnected,
    from the pool's own class and options, to fail at once instead.
    """
    if isinstance(client, RedisCluster | AsyncRedisCluster):
        return
    _check_pool(client.connection_pool)


def _check_pool(pool: Any) -> None:
    make = getattr(pool, "connection_class", None)
    kwargs = getattr(pool, "connection_kwargs", None)
    if make is None or not isinstance(kwargs, dict):
        return
    try:
        make(**kwargs)
    except TypeError as err:
        raise _refused(err) from None


def _refused(err: TypeError) -> InvalidInput:
    """An option redis-py refused, named as its TypeError names it."""
    named = _OPTION.search(str(err))
    if named:
        return InvalidInput(
            f"unknown option {named[1]!r}: neither atomlimit nor redis-py accepts it ({err})"
        )
    return InvalidInput(f"an option was refused by redis-py: {err}")


_OPTION = re.compile(r"argument '(\w+)'")


def is_cluster(client: Any) -> bool:
    """Whether ``client`` is a cluster client, sync or async."""
    return isinstance(client, RedisCluster | AsyncRedisCluster)


def retries(client: Any) -> int:
    """How often the client's own retry policy sends a command again."""
    if is_cluster(client):
        kwargs = client.nodes_manager.connection_kwargs
    else:
        kwargs = client.get_connection_kwargs()
    retry = kwargs.get("retry")
    get = getattr(retry, "get_retries", None)
    return max(int(get()), 0) if callable(get) else 0


def pool_of(client: Any) -> Any:
    """A standalone client's connection pool."""
    return client.connection_pool


def address(pool: Any) -> str:
    """Where ``pool`` connects, as messages name the server."""
    service = getattr(pool, "service_name", None)
    if service is not None:
        # A Sentinel-managed pool follows whichever server holds the role.
        role = "primary" if getattr(pool, "is_master", True) else "replica"
        return f"the {role} of Sentinel service {service!r}"
    kwargs = pool.connection_kwargs
    if kwargs.get("path"):
        return f"unix:{kwargs['path']}"
    return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"


def slot(key: str) -> int:
    """The cluster hash slot of ``key``."""
    return int(key_slot(key.encode()))


def node_for(client: Any, key: str, asking: tuple[str, int] | None) -> Any:
    """The cluster node a call on ``key`` goes to: the slot's owner, or the
    node an ASK named; None if the layout names no such node."""
    if asking is None:
        return client.nodes_manager.get_node_from_slot(slot(key))
    return node_at(client, *asking)


def node_at(client: Any, host: str, port: int) -> Any:
    """The cluster node at ``host``:``port``, or None if the layout names none."""
    return client.nodes_manager.get_node(host=host, port=port)


def node_pool(client: RedisCluster, node: Any) -> Any:
    """The sync connection pool of a cluster ``node``."""
    return client.get_redis_connection(node).connection_pool


def refresh(client: RedisCluster) -> None:
    """Learn the cluster's layout again (after MOVED)."""
    client.nodes_manager.initialize()


async def async_refresh(client: AsyncRedisCluster) -> None:
    """Learn the cluster's layout again (after MOVED)."""
    await client.nodes_manager.initialize()


async def async_initialize(client: AsyncRedisCluster) -> None:
    """Learn the cluster's layout for the first time."""
    await client.initialize()


def node_taker(node: Any) -> Callable[[], Awaitable[Any]]:
    """Takes a connection of an async cluster ``node`` (maybe not connected yet)."""

    async def take() -> Any:
        return node.acquire_connection()

    return take


def node_giver(node: Any) -> Callable[[Any], None]:
    """Gives a connection back to an async cluster ``node``."""
    return node.release  # type: ignore[no-any-return]


def pool_taker(pool: Any) -> Callable[[], Awaitable[Any]]:
    """Takes a connected connection from an async pool."""
    return pool.get_connection  # type: ignore[no-any-return]


def pool_giver(pool: Any) -> Callable[[Any], Awaitable[None]]:
    """Gives a connection back to an async pool."""
    return pool.release  # type: ignore[no-any-return]


def execute(client: SyncClient, args: Sequence[Any]) -> Any:
    """One plain command (the cache's and the sessions'), sent through the
    client's own command layer, with its retries, as redis-py sends any."""
    # redis-py leaves the sync execute_command unannotated.
    return client.execute_command(*args)  # type: ignore[no-untyped-call]


async def async_execute(client: AsyncClient, args: Sequence[Any]) -> Any:
    """One plain command through an async client's own command layer."""
    return await client.execute_command(*args)


# -- connections -----------------------------------------------------------------


def watch(connection: Any, on_connect: Callable[[Any], None]) -> None:
    """Have ``on_connect`` (a bound method) called on every connect of ``connection``.

    redis-py keeps the callback as a weak method and ignores a second
    registration of the same one.
    """
    connection.register_connect_callback(on_connect)


def stale(connection: Any) -> bool:
    """Whether an idle sync connection must be opened afresh before a write."""
    try:
        return bool(connection.can_read(timeout=0))
    except FAILURES:
        return True


def write(connection: Any, wires: Sequence[bytes]) -> None:
    """Write whole commands on a sync connection."""
    connection.send_packed_command(wires, check_health=False)


def read(connection: Any) -> Any:
    """Read one reply on a sync connection; an error reply is raised.

    redis-py raises some error replies (LOADING) as connection errors and
    would close the connection on them, losing the replies after it in the
    same write; the runner closes a connection itself when it truly broke.
    """
    return connection.read_response(disconnect_on_error=False)


def disconnect(connection: Any) -> None:
    connection.disconnect()


def reconnect(connection: Any) -> None:
    """Open a sync connection afresh (its connect callbacks run)."""
    connection.disconnect()
    connection.connect()


# redis-py 8 renamed the asyncio connection's check: ``can_read`` reads
# nothing, and ``can_read_destructive`` warns that it is deprecated. Older
# releases have only the latter.
_ASYNC_CHECK = (
    "can_read"
    if inspect.iscoroutinefunction(
        getattr(redis.asyncio.connection.AbstractConnection, "can_read", None)
    )
    else "can_read_destructive"
)


async def async_ready(connection: Any, idle: bool) -> None:
    """Make an async connection fit to write on; raises what connecting raised.

    A connection that is not connected is connected; one that sat ``idle``
    is first asked whether the server closed it. Either way a connect runs
    the connection's callbacks.
    """
    if connection.is_connected:
        if not idle:
            return
        # The event loop marks a stream at its end only once it has read
        # the FIN, and the task that wakes a pump runs before the loop reads
        # sockets again: a server that closed while the loop was busy (or
        # blocked) is seen only after one turn of the loop.
        await asyncio.sleep(0)
        try:
            if not await getattr(connection, _ASYNC_CHECK)():
                return
        except FAILURES:
            pass
        await connection.disconnect(nowait=True)
    await connection.connect()


async def async_write(connection: Any, data: bytes) -> None:
    """Write whole commands on an async connection."""
    await connection.send_packed_command(data, check_health=False)


async def async_read(connection: Any) -> Any:
    """Read one reply on an async connection, with no timeout of its own: the
    lane bounds the whole exchange. An error reply is raised."""
    return await connection.read_response(timeout=_FOREVER, disconnect_on_error=False)


async def async_disconnect(connection: Any) -> None:
    await connection.disconnect(nowait=True)


def socket_timeout(connection: Any) -> float | None:
    """The connection's own limit on waiting for the server, in seconds."""
    timeout = getattr(connection, "socket_timeout", None)
    return None if timeout is None else float(timeout)


_FOREVER = float("inf")
