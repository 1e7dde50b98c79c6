-- hit_gcra.lua: charge a GCRA limit if the cost fits.
--
-- KEYS[1]  the theoretical arrival time
-- ARGV[1]  client time in microseconds, or '' to read the server's TIME
-- ARGV[2]  cost, in units
-- ARGV[3]  burst, in units
-- ARGV[4]  flags: 1 partial, 2 shadow
-- ARGV[5]  emission interval T, microseconds (possibly fractional)
-- Reply    {used, stop} when all of the cost fitted; otherwise {status,
--          now, used, 0, stop, retry_at, grant}: status 1 a partial grant,
--          0 denied (nothing charged), 3 over the limit but charged in
--          shadow mode
-- Clock    server TIME, or ARGV[1] when the caller chose client time
-- Cost     O(1): a GET and a SET
-- include: lib/clock.lua
-- include: lib/reply.lua
-- include: lib/gcra.lua

local key = KEYS[1]
local now = clock_now(ARGV[1])
local cost, burst, interval = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[5])
local ahead = gc_ahead(key, now)
local room = gc_room(burst, interval, ahead)
local status, grant = decide(cost, room, tonumber(ARGV[4]))
if status == DENIED then
  return {0, now, burst - room, 0, now + math.ceil(ahead), gc_retry(burst, interval, ahead, cost, now), 0}
end
ahead = ahead + grant * interval
gc_store(key, now, ahead, ARGV[1])
local used, stop = burst - gc_room(burst, interval, ahead), now + math.ceil(ahead)
if status == FITS and grant == cost then
  return {used, stop}
end
return {status, now, used, 0, stop, 0, grant}
