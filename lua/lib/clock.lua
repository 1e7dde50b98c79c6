-- lib/clock.lua: the clock, and how long state is kept.
-- Included by operation scripts first; defines locals only.
--
-- Instants are integer microseconds since the Unix epoch. Lua numbers are
-- doubles, exact for integers up to 2^53 (year 2255 in microseconds), so no
-- rebasing is needed and every value crosses to and from Redis exactly.

-- include: lib/time_refused.lua

-- The server's TIME, unless the caller chose client time and sent it; a
-- TIME the ACL refuses is raised as TIME_REFUSED.
local function clock_now(client_now)
  if client_now ~= '' then
    return tonumber(client_now)
  end
  local t = redis.pcall('TIME')
  if t.err then
    error({err = TIME_REFUSED .. string.gsub(t.err, '^ERR ', '') .. ')'})
  end
  -- Arithmetic parses each numeric string once; tonumber() parses it twice.
  return t[1] * 1000000 + t[2]
end

-- State that records its own window or expiry outlives the instant it stops
-- mattering by this much, so a worker whose clock runs a few seconds behind
-- the writer's (client time) still finds the count of a window it is in.
-- State left over after that is harmless: every reader checks the stored
-- window or expiry before trusting it.
local GRACE_MS = 5000

-- A relative TTL in whole milliseconds, rounded up, ending GRACE_MS after
-- `stop`. Relative, not PEXPIREAT: with client time the server clock may
-- disagree, and the key must outlive the window on the clock that defines it.
local function ms_kept(stop, now)
  return math.max(1, math.ceil((stop - now) / 1000)) + GRACE_MS
end

-- Integers as plain text, never in exponent form. '%d' prints through a C
-- long, exact for every integer a double holds exactly (up to 2^53), and
-- costs a fraction of '%.0f', which runs the float printer; a value with a
-- fraction (none is expected) keeps '%.0f', which rounds it.
local function int_text(value)
  if value % 1 == 0 then
    return string.format('%d', value)
  end
  return string.format('%.0f', value)
end

-- Ends a window's state with its window. On the server's clock the key
-- expires at the window's last millisecond (Redis keeps a key while its
-- clock is at or before the expiry), so a window's key exists exactly while
-- the window is open, and a script that finds it needs no clock to know it
-- counts in that window. Windows are whole milliseconds, so this is exact.
-- With client time each worker's clock may differ, so the key lingers for
-- GRACE_MS and every call checks its clock against the window instead.
local function expire_with_window(key, now, stop, client_now)
  if client_now == '' then
    redis.call('PEXPIREAT', key, int_text(stop / 1000 - 1))
  else
    redis.call('PEXPIRE', key, ms_kept(stop, now))
  end
end
