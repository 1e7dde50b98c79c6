"""Fleet-wide limits for Celery tasks: rate limits, concurrency leases, spend caps.

Celery's own ``rate_limit`` is kept by each worker instance for itself, so
N workers admit N times the rate. Here every attempt of a task is one
[`acquire`][atomlimit.Limiter.acquire] of its limits on the shared server,
all of them or none, so the whole fleet admits exactly what the limits say.

A denied attempt does not sleep in the worker, where it would hold a pool
process and a prefetch slot: it schedules itself again with a ``countdown``
of the decision's ``retry_after`` (plus a little jitter) and ends. By
default such a retry does not count against the task's ``max_retries``.

```python
from celery import Celery
from atomlimit import RateLimit
from atomlimit.celery import TaskLimiter

app = Celery("shop", broker="redis://127.0.0.1:6380/1")
limits = TaskLimiter.from_url("redis://127.0.0.1:6380/0")

@app.task(bind=True)
@limits.limited(RateLimit.parse("50/minute", name="emails"), subject=lambda user: user)
def send_email(self, user): ...
```

Each process builds its own [`Limiter`][atomlimit.Limiter] on first use,
so a prefork pool never shares a connection across ``fork``. Celery is
imported only by this module (``pip install atomlimit[celery]``).
See docs/celery.md.
"""

from __future__ import annotations

import functools
import os
import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any, TypeVar

from celery import Task  # type: ignore[import-untyped]
from celery.exceptions import Retry, WorkerLostError  # type: ignore[import-untyped]
from celery.signals import task_failure  # type: ignore[import-untyped]

from atomlimit._codecs import codec_of
from atomlimit._engine import DEFAULT_HOLD
from atomlimit._errors import InvalidInput
from atomlimit._inputs import check_flag, hold_us, show
from atomlimit._waiting import pause
from atomlimit.decision import Decision
from atomlimit.errors import LimitExceeded
from atomlimit.holds import Acquired, Lease, Reservation
from atomlimit.limiter import Limiter
from atomlimit.specs import Concurrency, Hit, RateLimit, Spec, SpendCap

__all__ = ["LimitedTask", "TaskLimiter", "TaskLimits", "countdown_cap"]

F = TypeVar("F", bound=Callable[..., Any])

MAX_LIMITS = 16
"""Most limits one task may be held to (each is one hit of one acquire)."""
MAX_COUNTDOWN = timedelta(days=1)
"""Longest ``max_countdown`` or ``lease_retry`` a task may set."""
LEASE_RETRY = timedelta(seconds=1)
"""How soon a task denied a lease asks again, by default. A denied lease's
``retry_after`` is when the oldest lease expires, but leases are given back
as tasks finish, most long before that."""
DEFAULT_VISIBILITY = timedelta(hours=1)
"""kombu's Redis (and SQS) transport redelivers a message not acked after
this long, unless ``broker_transport_options["visibility_timeout"]`` says
otherwise; RabbitMQ's ``consumer_timeout`` (30 minutes by default) closes
the channel of a consumer that holds one unacked that long."""
ATTRIBUTE = "atomlimit"
"""Name of the attribute on ``task.request`` that holds the attempt's
[`Acquired`][atomlimit.Acquired], allowed or denied."""


class TaskLimiter:
    """Where tasks' limits are kept: a [`Limiter`][atomlimit.Limiter] per process.

    ``connect`` builds the limiter; it is called in each process on that
    process's first use, and again in a child after ``fork``, so no two
    processes ever share a connection. Build one at import time, beside
    the Celery app, and use [`limited`][atomlimit.celery.TaskLimiter.limited]
    on each task.
    """

    def __init__(self, connect: Callable[[], Limiter]) -> None:
        if not callable(connect):
            raise InvalidInput(f"connect must build a Limiter, got {show(connect)}")
        self._connect = connect
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._limiter: Limiter | None = None

    @classmethod
    def from_url(cls, url: str, **options: Any) -> TaskLimiter:
        """Each process connects to ``url`` with `Limiter.from_url` and ``options``."""
        if type(url) is not str:
            raise InvalidInput(f"url must be a str, got {show(url)}")
        return cls(functools.partial(Limiter.from_url, url, **options))

    @property
    def limiter(self) -> Limiter:
        """This process's limiter, built on first use here."""
        pid = os.getpid()
        with self._lock:
            # A forked child finds its parent's limiter here: it is left
            # alone (closing it would shut sockets the parent still uses)
            # and replaced by one of the child's own.
            if self._limiter is None or self._pid != pid:
                self._limiter = self._connect()
                self._pid = pid
            return self._limiter

    def limited(
        self,
        *limits: Spec[Any],
        subject: str | Callable[..., str] | None = None,
        cost: int | Callable[..., int] = 1,
        estimate: Decimal | int | Callable[..., Decimal | int] | None = None,
        hold: timedelta = DEFAULT_HOLD,
        settle: Callable[[Any], Decimal | int] | None = None,
        max_countdown: timedelta | None = None,
        lease_retry: timedelta = LEASE_RETRY,
        denials_use_retries: bool = False,
    ) -> TaskLimits:
        """Hold a task to ``limits``, fleet-wide; see [`TaskLimits`][atomlimit.celery.TaskLimits].

        The result decorates a function under ``@app.task(bind=True)``, or
        is given to a [`LimitedTask`][atomlimit.celery.LimitedTask] as
        ``limited=``.
        """
        return TaskLimits(
            self,
            _checked_limits(limits),
            subject,
            cost,
            estimate,
            hold,
            settle,
            _checked_countdown(max_countdown, "max_countdown"),
            _checked_countdown(lease_retry, "lease_retry"),
            check_flag(denials_use_retries, "denials_use_retries"),
        )

    def close(self) -> None:
        """Close this process's limiter, if it built one; the next use builds another."""
        with self._lock:
            if self._limiter is not None and self._pid == os.getpid():
                self._limiter.close()
            self._limiter = None


@dataclass(frozen=True, eq=False)
class TaskLimits:
    """The limits one task is held to, and what to do when they deny.

    Every attempt takes all of ``limits`` at once, under one
    [`acquire`][atomlimit.Limiter.acquire], or none of them:

    - a [`RateLimit`][atomlimit.RateLimit] is charged ``cost``;
    - a [`Concurrency`][atomlimit.Concurrency] lease is held while the task
      runs, and released when it returns, raises or retries; if the worker
      process dies, the worker's main process releases it, and the lease's
      own length is the backstop;
    - a [`SpendCap`][atomlimit.SpendCap] holds ``estimate`` (for ``hold`` at
      most) while the task runs; a task that returns settles ``settle(result)``
      (the estimate without ``settle``), and one that raises or retries
      releases the hold.

    ``subject``, ``cost`` and ``estimate`` are values, or callables taking
    the task's own arguments (not the bound ``self``). Without a subject,
    the task's name is the subject: one limit for the whole task.

    A denied attempt raises Celery's ``Retry`` after scheduling the task
    again in ``retry_after`` plus up to a tenth more (at most a second),
    and never more than ``max_countdown`` (see
    [`countdown_cap`][atomlimit.celery.countdown_cap]). A denied lease
    says when the oldest lease expires, but slots are given back as tasks
    finish, so a task denied one asks again after ``lease_retry`` at most. The retry keeps
    the task's ``retries`` count unless ``denials_use_retries`` is True,
    when it goes through ``task.retry`` and counts against ``max_retries``.
    An attempt whose cost can never fit raises
    [`LimitExceeded`][atomlimit.errors.LimitExceeded], and so does a denied
    task run outside a worker (called directly or with ``apply``), which
    has no queue to come back through.

    During the attempt, and in ``task_retry`` handlers, ``task.request.atomlimit``
    is the attempt's [`Acquired`][atomlimit.Acquired].
    """

    owner: TaskLimiter
    limits: tuple[Spec[Any], ...]
    subject: str | Callable[..., str] | None = None
    cost: int | Callable[..., int] = 1
    estimate: Decimal | int | Callable[..., Decimal | int] | None = None
    hold: timedelta = DEFAULT_HOLD
    settle: Callable[[Any], Decimal | int] | None = None
    max_countdown: timedelta | None = None
    lease_retry: timedelta | None = LEASE_RETRY
    denials_use_retries: bool = False

    def __post_init__(self) -> None:
        if self.subject is not None and type(self.subject) is not str:
            _callable(self.subject, "subject")
        if self.settle is not None:
            _callable(self.settle, "settle")
        caps = any(isinstance(limit, SpendCap) for limit in self.limits)
        if caps and self.estimate is None:
            raise InvalidInput("a SpendCap needs an estimate to hold while the task runs")
        if not caps and (self.estimate is not None or self.settle is not None):
            raise InvalidInput("estimate and settle are for a SpendCap, and none is given")
        hold_us(self.hold)
        # A fixed cost or estimate is checked now, as each attempt's acquire
        # would, so that a bad one shows when the task is defined.
        for limit in self.limits:
            if isinstance(limit, RateLimit) and not callable(self.cost):
                codec_of(limit).units(self.cost)
            elif isinstance(limit, SpendCap) and not callable(self.estimate):
                codec_of(limit).units(self.estimate)

    def __call__(self, func: F) -> F:
        """Decorate a task function; it must be under ``@app.task(bind=True)``."""
        _callable(func, "limited")

        @functools.wraps(func)
        def limited(task: Any, *args: Any, **kwargs: Any) -> Any:
            if not isinstance(task, Task):
                raise InvalidInput("a limited task needs @app.task(bind=True) above @limited")
            return self.run(task, lambda: func(task, *args, **kwargs), args, kwargs)

        limited.task_limits = self  # type: ignore[attr-defined]  # found on worker loss
        return limited  # type: ignore[return-value]

    def hits(self, task: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> list[Hit[Any]]:
        """One attempt's hits: every limit, charged to this call's subject."""
        subject = self._value(self.subject, args, kwargs)
        who = task.name if subject is None else subject
        found: list[Hit[Any]] = []
        for limit in self.limits:
            if isinstance(limit, SpendCap):
                estimate = self._value(self.estimate, args, kwargs)
                found.append(Hit(limit, who, estimate, hold=self.hold))
            elif isinstance(limit, RateLimit):
                found.append(Hit(limit, who, self._value(self.cost, args, kwargs)))
            else:
                found.append(Hit(limit, who))
        return found

    def run(
        self, task: Any, call: Callable[[], Any], args: Sequence[Any], kwargs: dict[str, Any]
    ) -> Any:
        """Take the limits, run ``call``, and give back what is held; or retry when denied."""
        request = task.request
        acquired = self.owner.limiter.acquire(
            self.hits(task, args, kwargs), request_id=attempt_id(request)
        )
        setattr(request, ATTRIBUTE, acquired)
        if not acquired.allowed:
            raise self._denied(task, acquired)
        try:
            result = call()
        except BaseException:
            _give_back(acquired)
            raise
        for reservation in acquired.reservations:
            actual = reservation.decision.granted if self.settle is None else self.settle(result)
            reservation.settle(actual)
        for lease in acquired.leases:
            lease.release()
        return result

    def _denied(self, task: Any, acquired: Acquired[Lease, Reservation]) -> BaseException:
        decision = next(d for d in acquired.decisions if not d.allowed)
        subject = None if acquired.denied_by is None else acquired.denied_by.subject
        exceeded = LimitExceeded(decision, limit=decision.spec, subject=subject)
        request = task.request
        cap = self.max_countdown or countdown_cap(task.app.conf)
        if isinstance(decision.spec, Concurrency) and self.lease_retry is not None:
            cap = min(cap, self.lease_retry)
        wait = retry_countdown(decision, cap)
        if wait is None or request.called_directly or request.is_eager:
            return exceeded
        if self.denials_use_retries:
            return task.retry(countdown=wait, exc=exceeded, throw=False)  # type: ignore[no-any-return]
        # task.retry would add one to `retries`, and a denial is no failure
        # of the task's own: the copy keeps the count it was sent with.
        again = task.signature_from_request(request, countdown=wait)
        again.apply_async()
        return Retry(exc=exceeded, when=wait, sig=again)  # type: ignore[no-any-return]

    @staticmethod
    def _value(value: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
        return value(*args, **kwargs) if callable(value) else value


class LimitedTask(Task):  # type: ignore[misc]
    """A Celery ``Task`` base class held to the [`TaskLimits`][atomlimit.celery.TaskLimits]
    in its ``limited`` attribute.

    ```python
    @app.task(base=LimitedTask, limited=limits.limited(RateLimit.parse("50/minute", name="mail")))
    def send_mail(to): ...
    ```

    A task without ``limited`` runs as a plain task.
    """

    limited: TaskLimits | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        limits = self.limited
        if limits is None:
            return super().__call__(*args, **kwargs)
        body = super().__call__
        return limits.run(self, lambda: body(*args, **kwargs), args, kwargs)


def attempt_id(request: Any) -> str:
    """The request id an attempt's acquire is made under: the task's id and ``retries``.

    A copy of the same attempt (a redelivered message) replays the first
    one's acquire instead of charging again, and the worker's main process
    finds what a lost child held by the same id.
    """
    return f"celery:{request.id}:{request.retries}"


def retry_countdown(decision: Decision[Any], cap: timedelta) -> float | None:
    """Seconds until a denied attempt tries again, or None when it never can.

    ``retry_after`` plus a random tenth of it (at most a second), so tasks
    denied together do not all come back in the same instant; never more
    than ``cap``, after which the attempt asks again.
    """
    wait = pause(decision, None, 0.0, random.random)
    return None if wait is None else min(wait, cap.total_seconds())


def countdown_cap(conf: Any) -> timedelta:
    """The longest countdown a denied task is given under this app's configuration.

    A task retried with a countdown sits unacked in a worker until it is
    due; kombu's Redis transport sends it again to another worker once it
    has been unacked for ``visibility_timeout`` (an hour unless
    ``broker_transport_options`` says otherwise), so it would run twice.
    Half the timeout leaves the other half for a busy worker to start it.
    A denial that must wait longer retries at the cap and asks again.
    """
    options = conf.broker_transport_options or {}
    seconds = options.get("visibility_timeout")
    visible = DEFAULT_VISIBILITY if seconds is None else timedelta(seconds=float(seconds))
    return min(visible / 2, MAX_COUNTDOWN)


def _give_back(acquired: Acquired[Lease, Reservation]) -> None:
    for reservation in acquired.reservations:
        reservation.release()
    for lease in acquired.leases:
        lease.release()


def _checked_limits(limits: Sequence[object]) -> tuple[Spec[Any], ...]:
    if not 0 < len(limits) <= MAX_LIMITS:
        raise InvalidInput(f"limited takes 1 to {MAX_LIMITS} limits, got {len(limits)}")
    for limit in limits:
        if not isinstance(limit, RateLimit | SpendCap | Concurrency):
            raise InvalidInput(
                f"limited takes RateLimit, Concurrency and SpendCap limits, got {show(limit)}"
            )
    return tuple(limits)  # type: ignore[arg-type]


def _checked_countdown(value: object, what: str) -> timedelta | None:
    if value is None or (
        isinstance(value, timedelta) and timedelta(milliseconds=10) <= value <= MAX_COUNTDOWN
    ):
        return value
    raise InvalidInput(
        f"{what} must be None or a timedelta from 10 ms to one day, got {show(value)}"
    )


def _callable(value: object, what: str) -> None:
    if not callable(value):
        raise InvalidInput(f"{what} must be callable, got {show(value)}")


def _task_limits(task: Any) -> TaskLimits | None:
    limits = getattr(task, "limited", None)
    if isinstance(limits, TaskLimits):
        return limits
    limits = getattr(task.run, "task_limits", None)
    return limits if isinstance(limits, TaskLimits) else None


@task_failure.connect(weak=False)  # type: ignore[untyped-decorator]
def _release_after_worker_lost(
    sender: Any = None,
    task_id: str | None = None,
    exception: BaseException | None = None,
    args: Sequence[Any] = (),
    kwargs: dict[str, Any] | None = None,
    **_: Any,
) -> None:
    """Give back what a pool process held when it died mid-task.

    Runs in the worker's main process, which Celery tells of the loss with
    the attempt's request on the task's stack. The attempt's acquire was
    made under `attempt_id`, so sending it again replays it, charging
    nothing, and hands back its leases and holds to release. A hold's spend
    is not known, so it is released, as it would expire.
    """
    if not isinstance(exception, WorkerLostError) or sender is None:
        return
    limits = _task_limits(sender)
    request = sender.request
    if limits is None or request is None or request.id != task_id:
        return
    # Only leases and holds need giving back. A rate limit's charge stays:
    # the attempt may have done its work, and if the acquire never ran,
    # sending it now would charge an attempt that was not made.
    if all(isinstance(limit, RateLimit) for limit in limits.limits):
        return
    hits = limits.hits(sender, args or (), kwargs or {})
    acquired = limits.owner.limiter.acquire(hits, request_id=attempt_id(request))
    if acquired.allowed:
        _give_back(acquired)
