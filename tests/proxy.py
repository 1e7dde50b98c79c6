"""A tiny threaded TCP proxy that can hold back server replies.

Fault tests need the situation "the server executed the command, but the
client gave up waiting for the reply".  Putting this proxy between client
and server and delaying only the server->client direction produces exactly
that: requests reach the server immediately, replies arrive late.

Note that redis-py sends handshake commands (HELLO / CLIENT SETINFO ...) when
it opens a connection, and their replies are delayed too.  To time out a
specific command, warm the connection up first (e.g. PING with delay 0) and
only then raise the delay.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

import redis
import redis.asyncio

__all__ = ["StallingProxy"]

_HOST = "127.0.0.1"
_CHUNK = 65536
# How often blocked loops wake up to notice stop(); bounds stop() latency.
_POLL_INTERVAL = 0.05


class _Pipe:
    """One proxied client connection: the client socket and its upstream socket."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.closed = threading.Event()
        self.replied = True
        """Whether a reply went back since the client last sent: its next
        request starts a new exchange."""
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            if self.closed.is_set():
                return
            self.closed.set()
        for sock in (self.client, self.upstream):
            # shutdown() wakes up a thread blocked in recv() on this socket;
            # close() alone does not reliably do so on Linux.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


class StallingProxy:
    """Forward TCP between 127.0.0.1:<port> and a target, delaying replies.

    * ``delay``: seconds every server->client chunk is held back (default 0).
    * ``stall_next_replies(n, delay, after=0)``: let ``after`` reply chunks
      pass, then hold back the next ``n`` (counted proxy-wide) by ``delay``
      seconds, then fall back to ``delay``-attribute behaviour.
    * ``connections_accepted``: number of client connections accepted so far.
    * ``drop_connections()``: abruptly close every proxied connection.
    * ``exchanges``: round trips so far, proxy-wide: a connection's requests
      up to the reply that follows them count once, however many commands
      (a pipeline) or TCP chunks they take.

    Delays are applied per chunk in arrival order on each connection, so
    replies are never reordered.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.delay: float = 0.0
        self.connections_accepted = 0
        self.exchanges = 0
        self.port = 0
        self._lock = threading.Lock()
        self._stalled_replies_left = 0
        self._passing_replies_left = 0
        self._stall_delay = 0.0
        self._stopping = threading.Event()
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._pipes: list[_Pipe] = []

    # -- public API -----------------------------------------------------------

    @property
    def url(self) -> str:
        return f"redis://{_HOST}:{self.port}/0"

    def start(self) -> StallingProxy:
        if self._listener is not None:
            raise RuntimeError("proxy already started")
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((_HOST, 0))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._spawn(self._accept_loop, name=f"proxy-accept-{self.port}")
        return self

    def stop(self) -> None:
        self._stopping.set()
        self.drop_connections()
        for thread in list(self._threads):
            thread.join(timeout=5)
        self._threads.clear()
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def client(self, **options: Any) -> redis.Redis:
        """A redis-py client whose connections pass through this proxy."""
        return redis.Redis(host=_HOST, port=self.port, **options)

    def async_client(self, **options: Any) -> redis.asyncio.Redis:
        """An asyncio redis-py client whose connections pass through this proxy."""
        return redis.asyncio.Redis(host=_HOST, port=self.port, **options)

    def stall_next_replies(self, n: int, delay: float, *, after: int = 0) -> None:
        with self._lock:
            self._passing_replies_left = after
            self._stalled_replies_left = n
            self._stall_delay = delay

    def drop_connections(self) -> None:
        with self._lock:
            pipes, self._pipes = self._pipes, []
        for pipe in pipes:
            pipe.close()

    def __enter__(self) -> StallingProxy:
        if self._listener is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return (
            f"<StallingProxy :{self.port} -> {self.target_host}:{self.target_port} "
            f"delay={self.delay}>"
        )

    # -- internals ------------------------------------------------------------

    def _spawn(self, target: Callable[..., None], *args: object, name: str) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        with self._lock:
            # Forget finished threads so long sessions do not accumulate them.
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    def _reply_delay(self) -> float:
        with self._lock:
            if self._passing_replies_left > 0:
                self._passing_replies_left -= 1
                return self.delay
            if self._stalled_replies_left > 0:
                self._stalled_replies_left -= 1
                return self._stall_delay
        return self.delay

    def _accept_loop(self) -> None:
        listener = self._listener
        assert listener is not None
        while not self._stopping.is_set():
            readable, _, _ = select.select([listener], [], [], _POLL_INTERVAL)
            if not readable:
                continue
            try:
                client, _ = listener.accept()
            except OSError:
                continue
            try:
                upstream = socket.create_connection((self.target_host, self.target_port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                # Target is down: behave like it, refuse by closing at once.
                client.close()
                continue
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pipe = _Pipe(client, upstream)
            with self._lock:
                self.connections_accepted += 1
                self._pipes.append(pipe)
            self._spawn(self._pump, pipe, upstream, client, False, name=f"proxy-reply-{self.port}")
            self._spawn(self._pump, pipe, client, upstream, True, name=f"proxy-request-{self.port}")

    def _pump(self, pipe: _Pipe, src: socket.socket, dst: socket.socket, is_request: bool) -> None:
        try:
            while not pipe.closed.is_set():
                data = src.recv(_CHUNK)
                if not data:
                    break
                if is_request:
                    with self._lock:
                        if pipe.replied:
                            pipe.replied = False
                            self.exchanges += 1
                else:
                    delay = self._reply_delay()
                    # Waiting on the pipe's event lets stop()/drop_connections()
                    # cut a long stall short instead of blocking shutdown.
                    if delay > 0 and pipe.closed.wait(delay):
                        break
                    # Marked when the reply is passed on, not when it came:
                    # what the client writes before it can see the reply
                    # belongs to the same exchange.
                    pipe.replied = True
                dst.sendall(data)
        except OSError:
            pass
        finally:
            # Either side closing (or erroring) ends the whole connection,
            # which is what a real TCP peer reset looks like to the client.
            pipe.close()
            with self._lock:
                if pipe in self._pipes:
                    self._pipes.remove(pipe)
