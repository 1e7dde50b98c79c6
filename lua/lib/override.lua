-- lib/override.lua: a per-subject override of a limit, kept in its slot.
-- Included by operation scripts; defines locals only.
--
-- One hash per (limit, subject), beside the limit's state: l the limit in
-- units (for gcra, the rate per period), b the burst (gcra only), i the
-- emission interval in microseconds that l gives (gcra only), e when it
-- expires (epoch microseconds; absent: never). The hash itself expires
-- GRACE_MS after e, so a lapsed override leaves nothing behind; every
-- reader checks e against its own clock first.
--
-- A fixed window's hit reads this hash only when its counter says to
-- (lib/fixed_window.lua): a counter holding a bare integer has no override
-- in force, so the common hit stays a GET and an INCRBY.

-- The override in force at `now` as {limit, burst, interval}, or nil.
local function ovr_read(key, now)
  local o = redis.call('HMGET', key, 'l', 'b', 'i', 'e')
  if not o[1] then
    return nil
  end
  local expires = tonumber(o[4])
  if expires and expires <= now then
    return nil
  end
  return o
end
