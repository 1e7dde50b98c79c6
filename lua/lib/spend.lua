-- lib/spend.lua: kinds "sc" (charge a spend cap) and "rs" (reserve on one).
-- Included after lib/clock.lua and lib/reply.lua; defines locals only.
--
-- Keys, in order:
-- 1. the window's spend, a string per (cap, subject, window) like a fixed
--    window's counter (lib/fixed_window.lua): "<committed>" while nothing
--    is held, "<committed>,<held>,<earliest hold expiry>" while something
--    is. It expires with its window on the server's clock.
-- 2. the holds: a sorted set of reservation ids, scored by expiry;
-- 3. their amounts: a hash of id -> amount, and "=" -> the total held (ids
--    are percent-encoded or start with "@", so never "=").
-- Committed spend belongs to its window; held amounts belong to no window:
-- a reservation made before midnight and settled after it still counts
-- until it is settled, released or expires. Admission is committed + held
-- + cost <= limit.
--
-- The window's string repeats what the holds add up to, so a plain charge
-- (hit_spend.lua) reads one key. Whoever changes the holds rewrites it. A
-- window's first charge, a hold that has expired, or a denial while
-- something is held (its retry time depends on when holds expire) go
-- through the scripts that read the holds too. Expired holds are pruned by
-- whichever of those scripts next touches the cap, so a dead worker's hold
-- gives its budget back after its TTL with no cleanup job.
--
-- Item arguments: limit, cost, flags, start, stop, and for "rs" the hold's
-- TTL in microseconds.

local TOTAL = '='

-- Committed, held and earliest hold expiry in the window's stored string.
local function spend_parse(stored)
  if not stored then
    return 0, 0, nil
  end
  local committed = tonumber(stored)
  if committed then
    return committed, 0, nil
  end
  local c, h, e = string.match(stored, '^(%d+),(%d+),(%d+)$')
  return tonumber(c), tonumber(h), tonumber(e)
end

local function spend_text(committed, held, earliest)
  if held > 0 then
    return int_text(committed) .. ',' .. int_text(held) .. ',' .. int_text(earliest)
  end
  return int_text(committed)
end

-- Writes the window's string. A new one ends with its window; an existing
-- one keeps its expiry.
local function spend_write(key, committed, held, earliest, existed, now, stop, client_now)
  redis.call('SET', key, spend_text(committed, held, earliest), 'KEEPTTL')
  if not existed then
    expire_with_window(key, now, stop, client_now)
  end
end

-- The total still held and the earliest expiry, after dropping expired
-- holds. O(log n + expired).
local function holds_prune(keys, now)
  local holds, amounts = keys[2], keys[3]
  local held = tonumber(redis.call('HGET', amounts, TOTAL) or '0')
  if held == 0 then
    return 0, nil
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
    redis.call('HSET', amounts, TOTAL, held)
  end
  local first = redis.call('ZRANGE', holds, 0, 0, 'WITHSCORES')
  if not first[2] then
    -- The hold sets timed out together (their last hold ended over GRACE_MS
    -- ago) before any script pruned them, or held only expired holds.
    redis.call('DEL', amounts)
    return 0, nil
  end
  if held == 0 then
    -- Only holds of zero remain: nothing to count, nothing to summarise.
    return 0, nil
  end
  return held, tonumber(first[2])
end

-- The hold sets live until their last hold ends.
local function holds_keep(keys, now)
  local last = redis.call('ZRANGE', keys[2], -1, -1, 'WITHSCORES')
  if last[2] then
    redis.call('PEXPIRE', keys[2], ms_kept(tonumber(last[2]), now))
    redis.call('PEXPIRE', keys[3], ms_kept(tonumber(last[2]), now))
  end
end

-- Removes one hold; returns its amount, or nil if it is not held (or has
-- expired: a hold of zero is not pruned by holds_prune, which skips the sets
-- while nothing is held).
local function holds_drop(keys, id, now)
  local amount = tonumber(redis.call('HGET', keys[3], id))
  if not amount then
    return nil
  end
  local expires = tonumber(redis.call('ZSCORE', keys[2], id))
  redis.call('HDEL', keys[3], id)
  redis.call('ZREM', keys[2], id)
  if amount > 0 then
    -- Never -0: Redis refuses "-0" as an integer.
    redis.call('HINCRBY', keys[3], TOTAL, -amount)
  end
  if not expires or expires <= now then
    return nil
  end
  return amount
end

-- When `cost` could fit with no new activity: as holds expire, or when the
-- window ends and committed spend is back to zero. 0 for never. O(holds).
local function holds_retry(keys, limit, used, held, stop, cost)
  if cost > limit then
    return 0
  end
  local holds = held > 0 and redis.call('ZRANGE', keys[2], 0, -1, 'WITHSCORES') or {}
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

-- The cap's state at run.now, holds pruned: an item table (lib/items.lua)
-- without apply; nil when now is outside the planned window.
local function spend_state(keys, args, run)
  local start, stop, now = tonumber(args[4]), tonumber(args[5]), run.now
  if now < start or now >= stop then
    return nil
  end
  local stored = redis.call('GET', keys[1])
  local committed = spend_parse(stored)
  local held, earliest = holds_prune(keys, now)
  local limit = tonumber(args[1])
  local it = {room = limit - committed - held, used = committed, held = held, stop = stop}
  -- Redis answers a missing key with false, not nil.
  it.earliest, it.existed = earliest, stored ~= false
  function it.retry(cost)
    return holds_retry(keys, limit, committed, held, stop, cost)
  end
  -- Writes committed spend and the holds' summary into the window's string.
  function it.save()
    spend_write(keys[1], it.used, it.held, it.earliest, it.existed, now, stop, run.client)
    it.existed = true
  end
  return it
end

-- After holds changed outside a charge: the window's string, if the window
-- has one, takes the new summary.
local function spend_resync(keys, args, run)
  local it = spend_state(keys, args, run)
  if it and it.existed then
    it.save()
  end
  return it
end

-- Lowers committed spend in the window's string by up to `amount`.
local function spend_lower(keys, args, run, amount)
  local it = spend_state(keys, args, run)
  if it and it.existed and amount > 0 then
    it.used = it.used - math.min(it.used, amount)
    it.save()
  end
end

-- Made on first use in a run: most runs use one kind.
local function sc_kind()
  local function sc_check(keys, args, run)
    local it = spend_state(keys, args, run)
    if not it then
      return nil
    end
    function it.apply(grant)
      it.used = it.used + grant
      it.save()
      return it.used, it.stop
    end
    return it
  end

  local function sc_undo(keys, args, run, grant, stop)
    -- Only the window that was charged owes anything back.
    if stop == tonumber(args[5]) then
      spend_lower(keys, args, run, grant)
    end
  end

  return {check = sc_check, undo = sc_undo, refund = spend_lower}
end

local function rs_kind()
  local function rs_check(keys, args, run)
    local it = spend_state(keys, args, run)
    if not it then
      return nil
    end
    function it.apply(grant)
      local expires = run.now + tonumber(args[6])
      redis.call('ZADD', keys[2], expires, run.id)
      redis.call('HSET', keys[3], run.id, grant)
      redis.call('HINCRBY', keys[3], TOTAL, grant)
      holds_keep(keys, run.now)
      it.held = it.held + grant
      it.earliest = math.min(it.earliest or expires, expires)
      -- The window's string is written even with nothing committed yet, so
      -- the next plain charge reads the hold in one key.
      it.save()
      return it.used, it.stop
    end
    return it
  end

  local function rs_undo(keys, args, run)
    holds_drop(keys, run.id, run.now)
    spend_resync(keys, args, run)
  end

  return {check = rs_check, undo = rs_undo}
end
