-- lib/fixed_window.lua: kind "fw", a counter per calendar or fixed window.
-- Included after lib/clock.lua; defines locals only.
--
-- One hash per (limit, subject): s = window start, e = window end
-- (microseconds), n = used. Storing the window in the hash means the first
-- writer fixes it: while the stored window is open, every worker counts in
-- it, even one whose time zone data disagrees. If the clock steps back, the
-- stored window stays in force rather than reopening an earlier one, so no
-- count is ever forgotten.
--
-- Item arguments: limit, cost, flags, b1, b2, b3, b4 (planned boundaries).

-- Returns start, stop, used; or nil when now is outside the planned windows.
local function fw_read(key, now, args)
  local state = redis.call('HMGET', key, 's', 'e', 'n')
  local stop = tonumber(state[2])
  if stop and now < stop then
    return tonumber(state[1]), stop, tonumber(state[3])
  end
  local start
  start, stop = pick_window(now, tonumber(args[4]), tonumber(args[5]),
    tonumber(args[6]), tonumber(args[7]))
  if not start then
    return nil
  end
  return start, stop, 0
end

-- Sets used, with a TTL that ends no earlier than `keep_until` (the window
-- end, or later when something else in the hash must outlive it).
local function fw_write(key, start, stop, used, now, keep_until)
  redis.call('HSET', key, 's', start, 'e', stop, 'n', used)
  redis.call('PEXPIRE', key, ms_kept(keep_until, now))
end

-- Lowers used by up to `amount` in the window ending at `stop`, never below
-- zero. A window that has already closed owes nothing back.
local function fw_lower(key, stop, amount)
  local state = redis.call('HMGET', key, 'e', 'n')
  if tonumber(state[1]) == stop then
    redis.call('HSET', key, 'n', math.max(tonumber(state[2]) - amount, 0))
  end
end

-- Lowers used in the window open now by up to `amount`: a refund. A window
-- that has closed owes nothing back.
local function fw_give_back(key, now, amount)
  local state = redis.call('HMGET', key, 'e', 'n')
  local stop = tonumber(state[1])
  if stop and now < stop then
    redis.call('HSET', key, 'n', math.max(tonumber(state[2]) - amount, 0))
  end
end

-- Made on first use in a run: every run defines its local functions afresh,
-- and most runs use one kind.
local function fw_kind()
  local function fw_check(keys, args, now)
    local key, limit = keys[1], tonumber(args[1])
    local start, stop, used = fw_read(key, now, args)
    if not start then
      return nil
    end
    local it = {room = limit - used, used = used, held = 0, stop = stop}
    function it.apply(grant)
      fw_write(key, start, stop, used + grant, now, stop)
      return used + grant, stop
    end
    function it.retry(cost)
      -- The whole limit is free again when this window ends.
      return cost <= limit and stop or 0
    end
    return it
  end

  local function fw_undo(keys, args, now, id, grant, stop)
    fw_lower(keys[1], stop, grant)
  end

  local function fw_refund(keys, args, now, amount)
    fw_give_back(keys[1], now, amount)
  end

  return {check = fw_check, undo = fw_undo, refund = fw_refund}
end
