-- lib/spend.lua: kinds "sc" (charge a spend cap) and "rs" (reserve on one).
-- Included after lib/fixed_window.lua; defines locals only.
--
-- Keys: the cap's hash (the fixed-window fields s, e, n, plus h = total
-- held), a sorted set of holds (reservation id, scored by expiry) and a hash
-- of their amounts. Committed spend (n) belongs to the current window; held
-- amounts belong to no window: a reservation made before midnight and
-- settled after it still counts until it is settled, released or expires.
-- Admission is committed + held + cost <= limit.
--
-- Expired holds are pruned by whichever script next touches the cap, so a
-- dead worker's hold gives its budget back after its TTL with no cleanup job.
--
-- Item arguments: limit, cost, flags, b1..b4, and for "rs" the hold's TTL
-- in microseconds.

-- Drops expired holds; returns the total still held. O(log n + expired).
local function holds_prune(keys, now)
  local cap, holds, amounts = keys[1], keys[2], keys[3]
  local held = tonumber(redis.call('HGET', cap, 'h') or '0')
  if held ~= 0 and redis.call('ZCARD', holds) == 0 then
    -- The hold sets timed out (their last hold ended over 5 s ago) before
    -- any script pruned them: nothing is held any more.
    redis.call('HSET', cap, 'h', 0)
    return 0
  end
  local expired = redis.call('ZRANGEBYSCORE', holds, '-inf', now)
  if #expired > 0 then
    for _, id in ipairs(expired) do
      held = held - tonumber(redis.call('HGET', amounts, id) or '0')
    end
    -- HDEL in slices: unpack() of a very long list overflows Lua's C stack.
    for first = 1, #expired, 500 do
      redis.call('HDEL', amounts, unpack(expired, first, math.min(first + 499, #expired)))
    end
    redis.call('ZREMRANGEBYSCORE', holds, '-inf', now)
    redis.call('HSET', cap, 'h', held)
  end
  return held
end

-- The instant the last hold expires, or nil with no holds.
local function holds_last(keys)
  local last = redis.call('ZRANGE', keys[2], -1, -1, 'WITHSCORES')
  return tonumber(last[2])
end

-- TTLs after a change: the cap lives until its window and every hold end;
-- the hold sets until their last hold ends.
local function holds_keep(keys, now, stop)
  local last = holds_last(keys)
  if last then
    redis.call('PEXPIRE', keys[2], ms_kept(last, now))
    redis.call('PEXPIRE', keys[3], ms_kept(last, now))
    stop = math.max(stop, last)
  end
  redis.call('PEXPIRE', keys[1], ms_kept(stop, now))
end

-- Removes one hold; returns its amount, or nil if it is not held.
local function holds_drop(keys, id)
  local amount = tonumber(redis.call('HGET', keys[3], id))
  if amount then
    redis.call('HDEL', keys[3], id)
    redis.call('ZREM', keys[2], id)
    if amount > 0 then
      -- Never -0: Redis refuses "-0" as an integer.
      redis.call('HINCRBY', keys[1], 'h', -amount)
    end
  end
  return amount
end

-- When `cost` could fit with no new activity: as holds expire, or when the
-- window ends and committed spend is back to zero. 0 for never. O(holds).
local function holds_retry(keys, limit, used, held, stop, cost)
  if cost > limit then
    return 0
  end
  local holds = redis.call('ZRANGE', keys[2], 0, -1, 'WITHSCORES')
  local committed = used
  for i = 1, #holds, 2 do
    local at = tonumber(holds[i + 1])
    if committed > 0 and stop <= at then
      committed = 0
      if held + cost <= limit then
        return stop
      end
    end
    held = held - tonumber(redis.call('HGET', keys[3], holds[i]) or '0')
    if committed + held + cost <= limit then
      return at
    end
  end
  return stop
end

local function spend_state(keys, args, now)
  local held = holds_prune(keys, now)
  local start, stop, used = fw_read(keys[1], now, args)
  if not start then
    return nil
  end
  local limit = tonumber(args[1])
  local it = {room = limit - used - held, used = used, held = held, stop = stop}
  function it.retry(cost)
    return holds_retry(keys, limit, used, held, stop, cost)
  end
  return it, start
end

local function sc_check(keys, args, now)
  local it, start = spend_state(keys, args, now)
  if not it then
    return nil
  end
  function it.apply(grant)
    fw_write(keys[1], start, it.stop, it.used + grant, now, it.stop)
    holds_keep(keys, now, it.stop)
    return it.used + grant, it.stop
  end
  return it
end

-- A reservation's outcome record: what was done, by which call, with which
-- reply code and charge, so a re-send of that call replays its reply.
local function outcome_read(key)
  local stored = redis.call('GET', key)
  if not stored then
    return nil
  end
  local what, by, code, grant = string.match(stored, '^(%a+)|([^|]*)|(%d+)|(%d+)$')
  return what, by, tonumber(code), tonumber(grant)
end

local function outcome_write(key, what, by, code, grant, ttl_ms)
  local text = what .. '|' .. by .. '|' .. code .. '|' .. int_text(grant)
  redis.call('SET', key, text, 'PX', ttl_ms)
end

-- Made on first use in a run: every run defines its local functions afresh,
-- and most runs use one kind.
local function sc_kind()
  local function sc_undo(keys, args, now, id, grant, stop)
    fw_lower(keys[1], stop, grant)
  end

  local function sc_refund(keys, args, now, amount)
    holds_prune(keys, now)
    fw_give_back(keys[1], now, amount)
  end

  return {check = sc_check, undo = sc_undo, refund = sc_refund}
end

local function rs_kind()
  local function rs_check(keys, args, now, id)
    local it, start = spend_state(keys, args, now)
    if not it then
      return nil
    end
    function it.apply(grant)
      local held = it.held + grant
      -- Keeps the window fields current, so the hash's TTL covers this window.
      fw_write(keys[1], start, it.stop, it.used, now, it.stop)
      redis.call('HSET', keys[1], 'h', held)
      redis.call('ZADD', keys[2], now + tonumber(args[8]), id)
      redis.call('HSET', keys[3], id, grant)
      holds_keep(keys, now, it.stop)
      it.held = held
      return it.used, it.stop
    end
    return it
  end

  local function rs_undo(keys, args, now, id)
    holds_drop(keys, id)
  end

  return {check = rs_check, undo = rs_undo}
end
