-- peek_gcra.lua: would a GCRA hit of this cost fit now?
--
-- KEYS[1]  the theoretical arrival time
-- KEYS[2]  the override's hash (lib/override.lua)
-- ARGV[1]  client time in microseconds, or '' to read the server's TIME
-- ARGV[2]  cost, in units
-- ARGV[3]  burst, in units
-- ARGV[4]  flags: 1 partial, 2 shadow
-- ARGV[5]  emission interval T, microseconds (possibly fractional)
-- Reply    {status, now, used, 0, stop, retry_at, grant}: status 1 fits, 0
--          would be denied, 3 over but let through in shadow mode; the
--          override's burst last while one is in force
-- Clock    server TIME, or ARGV[1] when the caller chose client time
-- Cost     O(1); writes nothing
-- include: lib/clock.lua
-- include: lib/reply.lua
-- include: lib/decide.lua
-- include: lib/gcra.lua
-- include: lib/override.lua

local now = clock_now(ARGV[1])
local cost, burst, interval = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[5])
local o = ovr_read(KEYS[2], now)
if o then
  burst, interval = tonumber(o[2]), tonumber(o[3])
end
local ahead = gc_ahead(KEYS[1], now)
local room = gc_room(burst, interval, ahead)
local status, grant = decide(cost, room, tonumber(ARGV[4]))
local retry = 0
if status == DENIED then
  retry = gc_retry(burst, interval, ahead, cost, now)
end
if o then
  return {status, now, burst - room, 0, now + math.ceil(ahead), retry, grant, burst}
end
return {status, now, burst - room, 0, now + math.ceil(ahead), retry, grant}
