"""A versioned, typed cache with single-flight fill: :class:`Cache` and :class:`AsyncCache`.

Keys are the seed application's, ``<version>:<category>:<part>[:<part>...]``
(``v1:enrichment:acme.com:<hash>``, ``v1:dataforseo:acme.com``), so entries
it wrote stay readable. Every write sets the value and its TTL in one
``SET ... PX``. A :class:`Category` names a kind of entry, its lifetime and,
optionally, the pydantic model its values are.

>>> import redis                                                        # doctest: +SKIP
>>> dataforseo = Category("dataforseo", ttl=timedelta(days=30))
>>> cache = Cache(redis.Redis.from_url("redis://127.0.0.1:6380/0"))    # doctest: +SKIP
>>> cache.set(dataforseo, "acme.com", b'{"rank": 3}')                  # doctest: +SKIP
>>> cache.get(dataforseo, "acme.com")                                   # doctest: +SKIP
b'{"rank": 3}'

Both classes plan through :mod:`atomlimit._cache_plan` and send through
:mod:`atomlimit._runner`. :class:`AsyncCache` is written once in
:mod:`atomlimit._async.cache`; :class:`Cache` is generated from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Generic, TypeVar, overload

from pydantic import BaseModel

from atomlimit._async.cache import DEFAULT_LOCK_TTL as DEFAULT_LOCK_TTL
from atomlimit._async.cache import DEFAULT_VERSION as DEFAULT_VERSION
from atomlimit._async.cache import DEFAULT_WAIT as DEFAULT_WAIT
from atomlimit._async.cache import AsyncCache
from atomlimit._checks import check_model, check_part, whole_ms
from atomlimit._sync.cache import Cache

__all__ = ["AsyncCache", "Cache", "Category"]

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True, slots=True, init=False)
class Category(Generic[T]):
    """A kind of cache entry: the name in its keys, its TTL, and its value type.

    With ``model`` (a pydantic model class), values are instances of it,
    stored as their JSON. Without, values are ``bytes`` or ``str``, stored
    as given; reads return ``bytes``, or ``str`` from a client created with
    ``decode_responses=True``.

    >>> Category("dataforseo", ttl=timedelta(days=30))
    Category(name='dataforseo', ttl=datetime.timedelta(days=30), model=None)
    """

    name: str
    """Second part of every key: ``<version>:<name>:...``."""
    ttl: timedelta
    """How long an entry lives after each write (or :meth:`Cache.touch`)."""
    model: type[BaseModel] | None
    """The pydantic model values are, or None for raw bytes / str."""
    _ttl_ms: int = field(repr=False, compare=False)

    @overload
    def __init__(
        self: Category[bytes | str], name: str, ttl: timedelta, model: None = None
    ) -> None: ...

    @overload
    def __init__(self: Category[M], name: str, ttl: timedelta, model: type[M]) -> None: ...

    def __init__(self, name: str, ttl: timedelta, model: type[BaseModel] | None = None) -> None:
        init = object.__setattr__  # frozen: the only writes are here
        init(self, "name", check_part(name, "Category.name"))
        init(self, "ttl", ttl)
        init(self, "model", check_model(model, "Category.model"))
        init(self, "_ttl_ms", whole_ms(ttl, "Category.ttl"))
