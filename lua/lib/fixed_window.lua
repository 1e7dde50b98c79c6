-- lib/fixed_window.lua: a counter per window, in one hash per (limit, subject).
-- Included by operation scripts after lib/clock.lua; defines locals only.
--
-- Hash fields: s = window start, e = window end (microseconds), n = used.
-- Storing the window in the hash means the first writer fixes it: while the
-- stored window is open, every worker counts in it, even one whose time zone
-- data disagrees. If the clock steps back, the stored window stays in force
-- rather than reopening an earlier one, so no count is ever forgotten.

-- Returns start, stop, used; or nil when now is outside the planned windows.
local function fw_read(key, now, b1, b2, b3, b4)
  local state = redis.call('HMGET', key, 's', 'e', 'n')
  local stop = tonumber(state[2])
  if stop and now < stop then
    return tonumber(state[1]), stop, tonumber(state[3])
  end
  local start
  start, stop = pick_window(now, b1, b2, b3, b4)
  if not start then
    return nil
  end
  return start, stop, 0
end

-- Sets used, and a TTL that ends no earlier than the window.
local function fw_write(key, start, stop, used, now)
  redis.call('HSET', key, 's', start, 'e', stop, 'n', used)
  redis.call('PEXPIRE', key, ms_until(stop, now))
end
