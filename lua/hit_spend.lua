-- hit_spend.lua: charge a spend cap if the cost fits, reading one key.
--
-- KEYS[1]  the cap's spend in the planned window (lib/spend.lua)
-- KEYS[2]  the override's hash (lib/override.lua)
-- ARGV[1]  client time in microseconds, or '' to read the server's TIME
-- ARGV[2]  cost, in units
-- ARGV[3]  limit, in units
-- ARGV[4]  flags: 1 partial, 2 shadow
-- ARGV[5]  window start, microseconds
-- ARGV[6]  window end, microseconds
-- Reply    the units committed after the charge, when all of the cost fitted
--          and nothing is held; otherwise {status, now, used, held, stop,
--          retry_at, grant}: status 1 charged (grant may be partial), 0
--          denied (nothing charged), 3 over the cap but charged in shadow
--          mode, -1 now outside the window (re-plan), -3 nothing done: the
--          holds must be read (charge.lua, with the holds' keys); while
--          an override is in force the reply is always a list, the limit
--          in force last
-- Clock    none while the window's spend exists and nothing is held (on the
--          server's clock it expires with its window); server TIME
--          otherwise; ARGV[1] when the caller chose client time
-- Cost     O(1): a GET and an INCRBY, or a SET while something is held
--
-- A window's first charge, an expired hold, or a denial while something is
-- held need the holds themselves, so those answer -3 and the client sends
-- the full script. Each is rare next to a plain charge.
-- include: lib/clock.lua
-- include: lib/reply.lua
-- include: lib/decide.lua
-- include: lib/spend.lua

local key, client_now = KEYS[1], ARGV[1]
local stored = redis.call('GET', key)
if not stored then
  return {-3}
end
local stop = tonumber(ARGV[6])
local now
if client_now ~= '' then
  now = tonumber(client_now)
  if now < tonumber(ARGV[5]) or now >= stop then
    return {-1, now}
  end
end
local committed, held, earliest = spend_parse(stored)
if held > 0 then
  now = now or clock_now('')
  if earliest <= now then
    return {-3}
  end
end
local cost, limit = tonumber(ARGV[2]), tonumber(ARGV[3])
-- lib/override.lua's ovr_read(), reading the clock only if one exists.
local o = redis.call('HMGET', KEYS[2], 'l', 'e')
if o[1] then
  now = now or clock_now('')
  if tonumber(o[2]) and tonumber(o[2]) <= now then
    o = nil
  else
    limit = tonumber(o[1])
  end
else
  o = nil
end
if held == 0 and committed + cost <= limit and not o then
  return redis.call('INCRBY', key, cost)
end
now = now or clock_now('')
local status, grant = decide(cost, limit - committed - held, tonumber(ARGV[4]))
if status == DENIED then
  if held > 0 then
    return {-3}
  end
  return {DENIED, now, committed, 0, stop, cost <= limit and stop or 0, 0, o and limit or nil}
end
committed = committed + grant
redis.call('SET', key, spend_text(committed, held, earliest), 'KEEPTTL')
return {status, now, committed, held, stop, 0, grant, o and limit or nil}
