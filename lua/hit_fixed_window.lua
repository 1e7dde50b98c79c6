-- hit_fixed_window.lua: charge a fixed-window limit if the cost fits.
--
-- KEYS[1]  the window's counter
-- ARGV[1]  client time in microseconds, or '' to read the server's TIME
-- ARGV[2]  cost, in units
-- ARGV[3]  limit, in units
-- ARGV[4]  flags: 1 partial, 2 shadow
-- ARGV[5]  window start, microseconds
-- ARGV[6]  window end, microseconds
-- Reply    the units used after the charge, when all of the cost fitted;
--          otherwise {status, now, used, 0, stop, retry_at, grant}: status
--          1 a partial grant, 0 denied (nothing charged), 3 over the limit
--          but charged in shadow mode, -1 now outside the window (nothing
--          done; re-plan)
-- Clock    none while the window's counter exists (on the server's clock it
--          expires with its window); server TIME to open a window or to
--          answer anything but a fitting hit; ARGV[1] with client time
-- Cost     O(1): a GET and an INCRBY
-- include: lib/clock.lua
-- include: lib/reply.lua
-- include: lib/fixed_window.lua

local key, client_now = KEYS[1], ARGV[1]
local stop = tonumber(ARGV[6])
local stored = redis.call('GET', key)
local now
if client_now ~= '' or not stored then
  now = clock_now(client_now)
  if now < tonumber(ARGV[5]) or now >= stop then
    return {-1, now}
  end
end
local cost, limit = tonumber(ARGV[2]), tonumber(ARGV[3])
local used = tonumber(stored or '0')
if used + cost <= limit then
  return fw_add(key, cost, now, stop, client_now)
end
now = now or clock_now('')
local status, grant = decide(cost, limit - used, tonumber(ARGV[4]))
if grant > 0 then
  used = fw_add(key, grant, now, stop, client_now)
end
local retry = 0
if status == DENIED and cost <= limit then
  retry = stop
end
return {status, now, used, 0, stop, retry, grant}
