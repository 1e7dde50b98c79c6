-- peek_fixed_window.lua: would a fixed-window hit of this cost fit now?
--
-- KEYS[1]  the window's counter
-- KEYS[2]  the override's hash, read when the counter is new or marked
-- ARGV[1]  client time in microseconds, or '' to read the server's TIME
-- ARGV[2]  cost, in units
-- ARGV[3]  limit, in units
-- ARGV[4]  flags: 1 partial, 2 shadow
-- ARGV[5]  window start, microseconds
-- ARGV[6]  window end, microseconds
-- Reply    {status, now, used, 0, stop, retry_at, grant}: status 1 fits, 0
--          would be denied, 3 over the limit but let through in shadow
--          mode, -1 now outside the window (re-plan); grant is what a hit
--          would be granted; the limit in force last while an override
--          applies
-- Clock    server TIME, or ARGV[1] when the caller chose client time
-- Cost     O(1); writes nothing
-- include: lib/clock.lua
-- include: lib/reply.lua
-- include: lib/decide.lua
-- include: lib/override.lua

local client_now = ARGV[1]
local now, stop = clock_now(client_now), tonumber(ARGV[6])
local stored = redis.call('GET', KEYS[1])
-- A counter that exists on the server's clock belongs to the open window.
if (client_now ~= '' or not stored) and (now < tonumber(ARGV[5]) or now >= stop) then
  return {-1, now}
end
local cost, limit = tonumber(ARGV[2]), tonumber(ARGV[3])
local used = tonumber(stored or '0')
local o
if not stored or not used then
  -- A new window, or a counter marked by an override (lib/fixed_window.lua).
  o = ovr_read(KEYS[2], now)
  if o then
    limit = tonumber(o[1])
  end
  used = tonumber(string.match(stored or '0', '^(%d+)'))
end
local status, grant = decide(cost, limit - used, tonumber(ARGV[4]))
local retry = 0
if status == DENIED and cost <= limit then
  retry = stop
end
if o then
  return {status, now, used, 0, stop, retry, grant, limit}
end
return {status, now, used, 0, stop, retry, grant}
