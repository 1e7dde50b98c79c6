-- compat_count.lua: the seed's daily counter, incremented atomically.
--
-- KEYS[1]  the seed's counter key, ratelimit:{type}:{id}:daily (an integer)
-- KEYS[2]  this call's record, in the counter's slot
-- ARGV[1]  limit, or '' to increment unconditionally (increment_rate_limit)
-- ARGV[2]  client time in microseconds, or '' to read the server's TIME
-- ARGV[3..6]  planned day boundaries b1 < b2 < b3 < b4, microseconds
-- ARGV[7]  how long to keep the record, milliseconds
-- Reply    {status, now, count}; status 1 incremented, 0 refused (at the
--          limit; nothing written), 2 a re-send of an applied call (its
--          count, nothing counted again), -1 now outside the planned windows
-- Clock    server TIME, or ARGV[2] when the caller chose client time
-- Cost     O(1)
--
-- The value stays a plain integer and the key still expires at the end of
-- the day, so workers running the seed's GET / INCR code keep working on
-- the same key during a rolling deploy.
-- include: lib/clock.lua
-- include: lib/planned.lua
-- include: lib/once.lua

local key, record = KEYS[1], KEYS[2]
local now = clock_now(ARGV[2])
local replayed = once_lookup(record, now)
if replayed then
  return replayed
end
local start, stop = pick_window(now, tonumber(ARGV[3]), tonumber(ARGV[4]),
  tonumber(ARGV[5]), tonumber(ARGV[6]))
if not start then
  return {-1, now, 0}
end
local count = tonumber(redis.call('GET', key) or '0')
if ARGV[1] ~= '' and count + 1 > tonumber(ARGV[1]) then
  return {0, now, count}
end
count = redis.call('INCR', key)
redis.call('PEXPIRE', key, ms_until(stop, now))
once_remember(record, tonumber(ARGV[7]), 1, count)
return {1, now, count}
