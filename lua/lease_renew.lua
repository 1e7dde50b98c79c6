-- lease_renew.lua: extend a lease that is still held.
--
-- KEYS[1]  the concurrency limit's lease set
-- ARGV[1]  client time in microseconds, or '' to read the server's TIME
-- ARGV[2]  the lease id
-- ARGV[3]  new lease length from now, microseconds
-- Reply    {code, now, expires_at}; code 1 renewed, 0 not held (it expired
--          or was released; its slot may belong to someone else now)
-- Clock    server TIME, or ARGV[1] when the caller chose client time
-- Cost     O(log n)
-- include: lib/clock.lua
-- include: lib/concurrency.lua

local now = clock_now(ARGV[1])
local key, id = KEYS[1], ARGV[2]
cc_prune(key, now)
if not redis.call('ZSCORE', key, id) then
  return {0, now, 0}
end
local expires = now + tonumber(ARGV[3])
redis.call('ZADD', key, 'XX', expires, id)
cc_keep(key, now)
return {1, now, expires}
