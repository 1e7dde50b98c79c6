-- lease_release.lua: give a lease's slot back. Idempotent.
--
-- KEYS[1]  the concurrency limit's lease set
-- ARGV[1]  the lease id
-- Reply    1 if the lease was held, 0 if it had expired or was released
-- Clock    none
-- Cost     O(log n)

return redis.call('ZREM', KEYS[1], ARGV[1])
