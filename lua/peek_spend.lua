-- peek_spend.lua: would a spend-cap hit of this cost fit now? One key.
--
-- KEYS[1]  the cap's spend in the planned window (lib/spend.lua)
-- KEYS[2]  the override's hash (lib/override.lua)
-- ARGV[1]  client time in microseconds, or '' to read the server's TIME
-- ARGV[2]  cost, in units
-- ARGV[3]  limit, in units
-- ARGV[4]  flags: 1 partial, 2 shadow
-- ARGV[5]  window start, microseconds
-- ARGV[6]  window end, microseconds
-- Reply    {status, now, used, held, stop, retry_at, grant}: status 1 fits,
--          0 would be denied, 3 over but let through in shadow mode, -1 now
--          outside the window (re-plan), -3 the holds must be read (peek.lua)
-- Clock    server TIME, or ARGV[1] when the caller chose client time
-- Cost     O(1); writes nothing
-- include: lib/clock.lua
-- include: lib/reply.lua
-- include: lib/decide.lua
-- include: lib/spend.lua
-- include: lib/override.lua

local client_now = ARGV[1]
local now, stop = clock_now(client_now), tonumber(ARGV[6])
local stored = redis.call('GET', KEYS[1])
if not stored then
  -- A window with no spend yet may still have holds to count.
  return {-3}
end
if client_now ~= '' and (now < tonumber(ARGV[5]) or now >= stop) then
  return {-1, now}
end
local committed, held, earliest = spend_parse(stored)
if held > 0 and earliest <= now then
  return {-3}
end
local cost, limit = tonumber(ARGV[2]), tonumber(ARGV[3])
local o = ovr_read(KEYS[2], now)
if o then
  limit = tonumber(o[1])
end
local status, grant = decide(cost, limit - committed - held, tonumber(ARGV[4]))
if status == DENIED and held > 0 then
  return {-3}
end
local retry = 0
if status == DENIED and cost <= limit then
  retry = stop
end
return {status, now, committed, held, stop, retry, grant, o and limit or nil}
