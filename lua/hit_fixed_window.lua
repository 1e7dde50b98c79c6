-- hit_fixed_window.lua: charge a fixed-window limit if the cost fits.
--
-- KEYS[1]  the window's counter
-- KEYS[2]  the override's hash (lib/override.lua), read only when the
--          counter is new or carries the override's mark
-- ARGV[1]  client time in microseconds, or '' to read the server's TIME
-- ARGV[2]  cost, in units
-- ARGV[3]  limit, in units
-- ARGV[4]  flags: 1 partial, 2 shadow
-- ARGV[5]  window start, microseconds
-- ARGV[6]  window end, microseconds
-- Reply    the units used after the charge, when all of the cost fitted
--          under the spec's limit; otherwise {status, now, used, 0, stop,
--          retry_at, grant}, and the limit in force last while an override
--          applies: status
--          1 a partial grant, 0 denied (nothing charged), 3 over the limit
--          but charged in shadow mode, -1 now outside the window (nothing
--          done; re-plan)
-- Clock    none while the window's counter exists (on the server's clock it
--          expires with its window); server TIME to open a window or to
--          answer anything but a fitting hit; ARGV[1] with client time
-- Cost     O(1): a GET and an INCRBY; an HMGET too when a window opens or
--          while an override is in force
--
-- The algorithm is lib/fixed_window.lua's, with its override mark, written
-- out here without a function: every `local function` of a script is a
-- closure built again on each EVALSHA, and the libraries' dozen of them
-- cost a fifth of this script's server time (as hit_gcra.lua found).
-- tests/algorithms/test_model_algorithms.py holds both forms to one model.
-- include: lib/time_refused.lua

local GRACE_MS, OVR_MARK = 5000, '|o'  -- lib/clock.lua's, lib/fixed_window.lua's

local key, client_now = KEYS[1], ARGV[1]
local stop = tonumber(ARGV[6])
local stored = redis.call('GET', key)
local used = tonumber(stored or '0')
local now
if client_now ~= '' or not stored then
  if client_now ~= '' then
    now = tonumber(client_now)
  else
    local t = redis.pcall('TIME')
    if t.err then
      error({err = TIME_REFUSED .. string.gsub(t.err, '^ERR ', '') .. ')'})
    end
    now = t[1] * 1000000 + t[2]
  end
  if now < tonumber(ARGV[5]) or now >= stop then
    return {-1, now}
  end
end
local cost, limit = tonumber(ARGV[2]), tonumber(ARGV[3])
-- A counter holding a bare integer has no override in force, and it keeps
-- the expiry it was given when its window opened.
if used and stored and used + cost <= limit then
  return redis.call('INCRBY', key, cost)
end

if not now then
  local t = redis.pcall('TIME')
  if t.err then
    error({err = TIME_REFUSED .. string.gsub(t.err, '^ERR ', '') .. ')'})
  end
  now = t[1] * 1000000 + t[2]
end
-- A new window, or a marked counter: the override's hash says what is in
-- force (lib/override.lua).
local o = nil
if not used or not stored then
  o = redis.call('HMGET', KEYS[2], 'l', 'e')
  local expires = tonumber(o[2])
  if not o[1] or (expires and expires <= now) then
    o = nil
  else
    limit = tonumber(o[1])
  end
  used = tonumber(string.match(stored or '0', '^(%d+)'))
end
local marked = stored and not tonumber(stored)

-- lib/reply.lua's decide().
local flags, status, grant = tonumber(ARGV[4]), 1, cost
if cost > limit - used then
  if flags % 2 == 1 and limit - used > 0 then
    grant = limit - used
  elseif flags % 4 >= 2 then
    status = 3
  else
    status, grant = 0, 0
  end
end

if grant > 0 or (marked and not o) or (o and not marked) then
  used = used + grant
  if o then
    redis.call('SET', key, string.format('%.0f', used) .. OVR_MARK, 'KEEPTTL')
  elseif marked then
    redis.call('SET', key, string.format('%.0f', used), 'KEEPTTL')
  else
    used = redis.call('INCRBY', key, grant)
  end
  if not stored then
    -- lib/clock.lua's expire_with_window().
    if client_now == '' then
      redis.call('PEXPIREAT', key, string.format('%.0f', stop / 1000 - 1))
    else
      redis.call('PEXPIRE', key, math.max(1, math.ceil((stop - now) / 1000)) + GRACE_MS)
    end
  end
end
local retry = 0
if status == 0 and cost <= limit then
  retry = stop
end
if o then
  return {status, now, used, 0, stop, retry, grant, limit}
end
return {status, now, used, 0, stop, retry, grant}
