"""The limiter shells, their handles, the cache and the session store.

Written once for asyncio in ``_async/``; ``scripts/unasync.py`` writes the
sync twins into ``_sync/`` (``make unasync``). The public modules
(``atomlimit.limiter``, ``.holds``, ``.cache``, ``.sessions``) export both.
"""
