-- hit_gcra.lua: charge a GCRA limit if the cost fits.
--
-- KEYS[1]  the theoretical arrival time
-- KEYS[2]  the override's hash (lib/override.lua): burst b and interval i
-- ARGV[1]  client time in microseconds, or '' to read the server's TIME
-- ARGV[2]  cost, in units
-- ARGV[3]  burst, in units
-- ARGV[4]  flags: 1 partial, 2 shadow
-- ARGV[5]  emission interval T, microseconds (possibly fractional)
-- Reply    {used, stop} when all of the cost fitted; otherwise {status,
--          now, used, 0, stop, retry_at, grant}: status 1 a partial grant,
--          0 denied (nothing charged), 3 over the limit but charged in
--          shadow mode; while an override is in force, its burst follows,
--          last, in either shape
-- Clock    server TIME, or ARGV[1] when the caller chose client time
-- Cost     O(1): a GET and a SET, and an HMGET of the override's hash only
--          when the TAT is marked or missing (lib/gcra.lua); the SET sets
--          the expiry only when the TAT enters a later second
--
-- The algorithm is lib/gcra.lua's (its notes explain the base, the slack
-- and the expiry), written out here without a function: every `local
-- function` of a script is a closure built again on each EVALSHA, and the
-- shared library's dozen of them cost a fifth of this script's server time.
-- tests/test_model_algorithms.py holds both forms to one model.
-- include: lib/time_refused.lua

local GC_BASE, GC_SLACK, GC_SECOND, GRACE_MS = 1735689600000000, 0.1, 1000000, 5000
local GC_MARK = '|o'  -- lib/gcra.lua's

local key, client_now = KEYS[1], ARGV[1]
local now
if client_now ~= '' then
  now = tonumber(client_now)
else
  local t = redis.pcall('TIME')
  if t.err then
    error({err = TIME_REFUSED .. string.gsub(t.err, '^ERR ', '') .. ')'})
  end
  now = t[1] * 1000000 + t[2]
end
local cost, burst, interval = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[5])
local text = redis.call('GET', key)
local stored, marked = tonumber(text), false
if text and not stored then
  stored, marked = tonumber(string.match(text, '^([^|]+)')), true
end
-- An unmarked TAT says that no override is in force (lib/gcra.lua): only a
-- marked or missing one leaves the override's hash to read, with
-- lib/override.lua's ovr_read() written out.
local o = nil
if marked or not text then
  o = redis.call('HMGET', KEYS[2], 'b', 'i', 'e')
  if o[1] and not (tonumber(o[3]) and tonumber(o[3]) <= now) then
    burst, interval = tonumber(o[1]), tonumber(o[2])
  else
    o = nil
  end
end

-- How far the stored TAT is ahead of now, and the units that fit.
local ahead = 0
if stored and stored > now - GC_BASE then
  ahead = stored - (now - GC_BASE)
end
local room = math.floor((burst * interval - ahead + GC_SLACK) / interval)

local status, grant = 1, cost
if cost > room then
  local flags = tonumber(ARGV[4])
  if flags % 2 == 1 and room > 0 then
    grant = room
  elseif flags < 2 then
    local retry = 0
    if cost <= burst then
      retry = now + math.max(math.ceil(ahead + (cost - burst) * interval - GC_SLACK), 0)
    end
    if o then
      return {0, now, burst - room, 0, now + math.ceil(ahead), retry, 0, burst}
    end
    return {0, now, burst - room, 0, now + math.ceil(ahead), retry, 0}
  else
    status = 3
  end
end

ahead = ahead + grant * interval
-- A grant of nothing (a cost of 0) leaves the state as it is.
if grant > 0 then
  local tat = now - GC_BASE + ahead
  -- Marked while an override is in force; a mark whose override has
  -- expired goes with this write.
  local value = tat
  if o then
    value = string.format('%.17g', tat) .. GC_MARK
  end
  if client_now ~= '' then
    redis.call('SET', key, value, 'PX', math.max(1, math.ceil(ahead / 1000)) + GRACE_MS)
  elseif stored and math.floor(tat / GC_SECOND) <= math.floor(stored / GC_SECOND) then
    -- The key's expiry is at least gc_expiry(stored), which is gc_expiry(tat).
    redis.call('SET', key, value, 'KEEPTTL')
  else
    redis.call('SET', key, value, 'PXAT',
      (GC_BASE + (math.floor(tat / GC_SECOND) + 1) * GC_SECOND) / 1000 + GRACE_MS)
  end
end
local used, stop = burst - math.floor((burst * interval - ahead + GC_SLACK) / interval),
  now + math.ceil(ahead)
local reply
if status == 1 and grant == cost then
  reply = {used, stop}
else
  reply = {status, now, used, 0, stop, 0, grant}
end
if o then
  reply[#reply + 1] = burst
end
return reply
