"""Reaching the server a command names: URL checks, cluster detection, errors.

A command never shows a password: URLs are printed with it masked. Every
redis-py failure becomes a `CommandError` that says which server and
what went wrong, so the user sees one line and not a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException
from redis.retry import Retry

from atomlimit._errors import BackendError
from atomlimit.cli._exit import FAILED, UNREACHABLE, CommandError

URL_ENV = "ATOMLIMIT_URL"
# An operator's command should answer in seconds or say why not; redis-py's
# default retries with backoff would make an unreachable server look hung.
CONNECT_TIMEOUT = 5.0
REPLY_TIMEOUT = 10.0
_DB = re.compile(r"/?(\d{1,5})?/?")


@dataclass(frozen=True, slots=True)
class Url:
    """A server URL as given, as shown (password masked), and its database."""

    text: str
    shown: str
    db: int


def add_url_argument(parser: argparse.ArgumentParser, *, required: bool) -> None:
    """``--url``; a required one defaults to ``$ATOMLIMIT_URL``, which keeps passwords out of ps."""
    if required:
        parser.add_argument(
            "--url",
            default=os.environ.get(URL_ENV),
            help=f"Redis or Valkey URL, e.g. redis://user:pass@host:6379/0 (default: ${URL_ENV})",
        )
    else:
        parser.add_argument("--url", help="Redis or Valkey URL, e.g. redis://host:6379/0")


def parse_url(text: str | None) -> Url:
    """Check ``text`` before connecting: scheme, port and database must make sense."""
    if not text:
        raise CommandError(f"no server given: pass --url or set {URL_ENV}", UNREACHABLE)
    shown = masked(text)
    try:
        options = redis.connection.parse_url(text)  # type: ignore[no-untyped-call]
    except ValueError as err:
        raise CommandError(f"bad URL {shown}: {err}", UNREACHABLE) from err
    if "db" in options:
        db = int(options["db"])
    else:
        # redis-py silently ignores a path that is not a number, which would
        # point the command at database 0 when the user meant another.
        path = urlsplit(text).path if not text.startswith("unix:") else ""
        match = _DB.fullmatch(path)
        if match is None:
            raise CommandError(
                f"bad URL {shown}: the path must be a database number, like /0", UNREACHABLE
            )
        db = int(match.group(1) or 0)
    return Url(text, shown, db)


def masked(url: str) -> str:
    """``url`` with its password replaced by ``***``."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
    except ValueError:
        return url
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


@contextlib.contextmanager
def connect(url: Url) -> Iterator[redis.Redis | RedisCluster]:
    """A client for ``url``: a cluster client when the server is a cluster node.

    The first connection is opened here, so a wrong address, password or
    database fails now, with exit code 2, before any command's work starts.
    """
    options = {
        "decode_responses": True,
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "socket_timeout": REPLY_TIMEOUT,
        "retry": Retry(NoBackoff(), 0),
    }
    client: redis.Redis | RedisCluster
    with reported(url, code=UNREACHABLE):
        client = redis.Redis.from_url(url.text, **options)
        try:
            connection = client.connection_pool.get_connection()
            client.connection_pool.release(connection)
            if _is_cluster_node(client):
                client.close()
                client = RedisCluster.from_url(url.text, **options)
        except BaseException:
            client.close()
            raise
    try:
        yield client
    finally:
        client.close()


@contextlib.contextmanager
def reported(url: Url, *, code: int = FAILED) -> Iterator[None]:
    """Turn redis-py's errors into one line naming the server.

    A connection lost midway still exits 2, since the server stopped
    answering; any other error the server sends exits with ``code``.
    """
    try:
        yield
    except redis.AuthenticationError as err:
        raise CommandError(f"{url.shown}: authentication refused: {err}", UNREACHABLE) from err
    except (redis.ConnectionError, redis.TimeoutError) as err:
        raise CommandError(f"cannot reach {url.shown}: {err}", UNREACHABLE) from err
    except BackendError as err:
        lost = isinstance(err.__cause__, redis.ConnectionError | redis.TimeoutError)
        raise CommandError(
            f"cannot reach {url.shown}: {err}" if lost else f"{url.shown}: {err}",
            UNREACHABLE if lost else code,
        ) from err
    except (redis.RedisError, RedisClusterException) as err:
        raise CommandError(f"{url.shown}: {err}", code) from err


def _is_cluster_node(client: redis.Redis) -> bool:
    try:
        info = client.info("cluster")
    except redis.ResponseError:
        return False  # INFO refused: treat as standalone; doctor reports the refusal
    return bool(info.get("cluster_enabled"))


def primaries(client: redis.Redis | RedisCluster) -> list[tuple[str, redis.Redis]]:
    """Each primary behind ``client`` as ``(address, client of that node alone)``.

    Scripts and server settings are per node, so a cluster is asked node by
    node; a standalone client is its own single primary.
    """
    if isinstance(client, RedisCluster):
        return [
            (f"{node.host}:{node.port}", client.get_redis_connection(node))
            for node in client.get_primaries()  # type: ignore[no-untyped-call]
        ]
    options = client.connection_pool.connection_kwargs
    if "path" in options:
        return [(str(options["path"]), client)]
    return [(f"{options.get('host', 'localhost')}:{options.get('port', 6379)}", client)]
