"""A versioned, typed cache with single-flight fill: [`Cache`][atomlimit.cache.Cache] and
[`AsyncCache`][atomlimit.cache.AsyncCache].

Keys are the seed application's, ``<version>:<category>:<part>[:<part>...]``
(``v1:enrichment:acme.com:<hash>``, ``v1:dataforseo:acme.com``), so entries
it wrote stay readable. Every write sets the value and its TTL in one
``SET ... PX``. A [`Category`][atomlimit.cache.Category] names a kind of entry, its lifetime and,
optionally, the pydantic model its values are.

>>> from datetime import timedelta
>>> import redis
>>> dataforseo = Category("dataforseo", ttl=timedelta(days=30))
>>> client = redis.Redis.from_url("redis://127.0.0.1:6380/0")
>>> cache = Cache(client)
>>> cache.set(dataforseo, "acme.com", b'{"rank": 3}')
>>> cache.get(dataforseo, "acme.com")
b'{"rank": 3}'
>>> client.close()

Both classes plan through `atomlimit._cache_plan` and send through
the runners. `AsyncCache` is written once in
`atomlimit._async.cache`; `Cache` is generated from it.
"""

from __future__ import annotations

from atomlimit._async.cache import DEFAULT_LOCK_TTL as DEFAULT_LOCK_TTL
from atomlimit._async.cache import DEFAULT_VERSION as DEFAULT_VERSION
from atomlimit._async.cache import DEFAULT_WAIT as DEFAULT_WAIT
from atomlimit._async.cache import AsyncCache
from atomlimit._cache_plan import Category as Category
from atomlimit._sync.cache import Cache

__all__ = ["AsyncCache", "Cache", "Category"]
