-- lease_release.lua: give a lease's slot back. Idempotent.
--
-- KEYS[1]  the concurrency limit's lease set
-- ARGV[1]  client time in microseconds, or '' to read the server's TIME
-- ARGV[2]  the lease id
-- Reply    {code, now}; code 1 if the lease was held, 0 if it had lapsed or
--          was released
-- Clock    server TIME, or ARGV[1] when the caller chose client time
-- Cost     O(log n + expired)
-- include: lib/clock.lua
-- include: lib/concurrency.lua

local now = clock_now(ARGV[1])
cc_prune(KEYS[1], now)
return {redis.call('ZREM', KEYS[1], ARGV[2]), now}
