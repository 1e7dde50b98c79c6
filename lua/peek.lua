-- peek.lua: would a hit of this cost pass? Reads only; charges nothing.
--
-- KEYS[1]  counter hash of the (limit, subject)
-- ARGV[1]  limit, in units
-- ARGV[2]  cost, in units
-- ARGV[3]  client time in microseconds, or '' to read the server's TIME
-- ARGV[4..7]  planned window boundaries b1 < b2 < b3 < b4, microseconds
-- Reply    {status, now, used, window_end}; status 1 would pass, 0 would be
--          denied, -1 now outside the planned windows (re-plan)
-- Clock    server TIME, or ARGV[3] when the caller chose client time
-- Cost     O(1)
-- include: lib/clock.lua
-- include: lib/fixed_window.lua

local limit, cost = tonumber(ARGV[1]), tonumber(ARGV[2])
local now = clock_now(ARGV[3])
local start, stop, used = fw_read(KEYS[1], now, tonumber(ARGV[4]), tonumber(ARGV[5]),
  tonumber(ARGV[6]), tonumber(ARGV[7]))
if not start then
  return {-1, now, 0, 0}
end
if used + cost > limit then
  return {0, now, used, stop}
end
return {1, now, used, stop}
