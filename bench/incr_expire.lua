-- incr_expire.lua: the least a fixed-window counter can do in one script.
--
-- KEYS[1]  the counter
-- ARGV[1]  cost to add
-- ARGV[2]  window length in seconds, set as the TTL when the counter is new
-- Reply    the count after adding
-- Clock    none (the TTL runs on the server's clock)
-- Cost     O(1)
--
-- bench/peers.py runs it as the floor every script-based row is held to: any
-- limiter that decides in one round trip pays at least this much.

local n = redis.call('INCRBY', KEYS[1], ARGV[1])
if n == tonumber(ARGV[1]) then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return n
