-- hit.lua: check a fixed-window limit and charge it only if the cost fits.
--
-- KEYS[1]  counter hash of the (limit, subject)
-- KEYS[2]  replay record of the request id
-- ARGV[1]  limit, in units
-- ARGV[2]  cost, in units
-- ARGV[3]  client time in microseconds, or '' to read the server's TIME
-- ARGV[4..7]  planned window boundaries b1 < b2 < b3 < b4, microseconds
-- ARGV[8]  how long to remember the request id, milliseconds
-- Reply    {status, now, used, window_end}; status 1 allowed, 0 denied,
--          2 replay of an earlier charge, -1 now outside the planned
--          windows (nothing done; re-plan), -2 request id reused with
--          another cost (nothing done)
-- Clock    server TIME, or ARGV[3] when the caller chose client time
-- Cost     O(1)
-- include: lib/clock.lua
-- include: lib/replay.lua
-- include: lib/fixed_window.lua

local key, rkey = KEYS[1], KEYS[2]
local limit, cost = tonumber(ARGV[1]), tonumber(ARGV[2])
local now = clock_now(ARGV[3])

local status, used, stop = replay_lookup(rkey, cost)
if status then
  return {status, now, used, stop}
end

local start
start, stop, used = fw_read(key, now, tonumber(ARGV[4]), tonumber(ARGV[5]),
  tonumber(ARGV[6]), tonumber(ARGV[7]))
if not start then
  return {-1, now, 0, 0}
end
-- Both sides stay below 2^53 (the client checks), so a sum that exceeds the
-- limit still exceeds it after rounding: the comparison is exact.
if used + cost > limit then
  return {0, now, used, stop}
end
used = used + cost
fw_write(key, start, stop, used, now)
replay_remember(rkey, tonumber(ARGV[8]), used, stop, cost)
return {1, now, used, stop}
