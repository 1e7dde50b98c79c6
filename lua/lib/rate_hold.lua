-- lib/rate_hold.lua: kinds "hfw", "hgc" and "hsw", a hold on a rate limit.
-- Included lazily by lib/items.lua, which hands rh_kind the kind it wraps;
-- defines locals only.
--
-- A hold on a rate limit (a token estimate on a fixed window, a GCRA or a
-- sliding counter) is charged into the limit's own state when it is taken,
-- like a hit, so every plain hit and peek counts it with no key of its own
-- to read: the hot path is the same with or without reservations. What
-- makes it a hold is its record, kept beside the state:
-- 1. the holds: a sorted set of reservation ids, scored by expiry;
-- 2. their charges: a hash of id -> "<units>:<stop>", the units charged and
--    the stop its kind's apply reported, which is what an undo of that
--    charge needs (lib/fixed_window.lua gives back only in the same window).
-- Settling gives the estimate back where it still counts and charges the
-- actual cost in full, past the limit if need be, so the state ends up as
-- if the actual had been charged. Releasing gives the estimate back. A hold
-- past its expiry is given back by whichever reservation, settle or release
-- next touches the limit and subject; until then plain hits still count it,
-- which can only deny more, never admit more.
--
-- Item arguments: the wrapped kind's own, then the hold's TTL in
-- microseconds. Item keys: the wrapped kind's state, the holds, their
-- charges (then the guard's, when flagged). The wrapped kinds read only
-- their state, keys[1], so they are handed the hold's keys as they are,
-- not a table made for each call.

-- Removes a hold's record; returns its units and stop, or nil if none.
local function rh_take(keys, id)
  local stored = redis.call('HGET', keys[3], id)
  if not stored then
    return nil
  end
  redis.call('HDEL', keys[3], id)
  redis.call('ZREM', keys[2], id)
  local units, stop = string.match(stored, '^(%d+):(%d+)$')
  if units then
    -- Arithmetic parses each number once; tonumber() parses it twice.
    return units + 0, stop + 0
  end
end

-- The kind of a hold on the kind whose functions are `base`.
local function rh_kind(base)

  -- Pruning and keeping the hold sets are written out here, their only
  -- use, not as functions of their own: every function a script defines is
  -- a closure made on each run.
  local function rh_check(keys, args, run)
    -- The planned window is confirmed before anything changes.
    local it = base.check(keys, args, run)
    if not it then
      return nil
    end
    -- Every hold past its expiry is given back. The earliest hold says
    -- whether there is one, and whether there are no holds at all (then
    -- neither set exists: `fresh`), so when none has expired, as is usual,
    -- it is the only one read. O(log n + expired).
    local first = redis.call('ZRANGE', keys[2], '0', '0', 'WITHSCORES')
    local fresh = not first[2]
    if not fresh and first[2] + 0 <= run.now then
      local expired = redis.call('ZRANGEBYSCORE', keys[2], '-inf', run.now)
      for _, id in ipairs(expired) do
        local units, stop = rh_take(keys, id)
        if units and units > 0 then
          base.undo(keys, args, run, units, stop)
        end
      end
      it = base.check(keys, args, run)
    end
    local apply = it.apply
    function it.apply(grant)
      local used, stop = apply(grant)
      local ttl = tonumber(args[#args])
      local expires = run.now + ttl
      redis.call('ZADD', keys[2], int_text(expires), run.id)
      redis.call('HSET', keys[3], run.id, int_text(grant) .. ':' .. int_text(stop))
      -- The hold sets live until their last hold ends. Their TTL only ever
      -- grows, so the TTL they have still covers every hold taken before;
      -- when it also covers the new hold's end nothing is written.
      -- Otherwise both get the new hold's end plus one more hold's `ttl`,
      -- so that a run of holds refreshes them once per TTL, not on every
      -- hold: one PTTL where reading the last hold and two PEXPIREs was
      -- every hold's cost, and none when the sets are new. Both sets are
      -- always written together and emptied together, so the one's TTL is
      -- the other's. Sets kept past their last hold are harmless: every
      -- reader checks a hold's expiry first.
      local needed = ms_kept(expires, run.now)
      if fresh or redis.call('PTTL', keys[2]) < needed then
        local ms = int_text(needed + math.ceil(ttl / 1000))
        redis.call('PEXPIRE', keys[2], ms)
        redis.call('PEXPIRE', keys[3], ms)
      end
      return used, stop
    end
    return it
  end

  -- An acquire taken back: the hold goes, and its charge if it still counts.
  local function rh_undo(keys, args, run)
    local units, stop = rh_take(keys, run.id)
    if units and units > 0 then
      base.undo(keys, args, run, units, stop)
    end
  end

  -- Ends the hold `id`: gives back its charge where it still counts, then
  -- charges `actual` (nil: nothing). `checked` is this run's check of the
  -- item, when nothing has written the limit's state since, or nil.
  -- Returns whether the hold was still held, and the limit's state after it.
  local function rh_end(keys, args, run, id, actual, checked)
    local units, stop = rh_take(keys, id)
    if base.settle then
      -- The kind does both in one read and one write.
      return units ~= nil, base.settle(keys, args, run, units, stop, actual, checked)
    end
    if units and units > 0 then
      base.undo(keys, args, run, units, stop)
    end
    local it = base.check(keys, args, run)
    if actual and actual > 0 then
      -- What apply reports is the state after it: no second read.
      it.used, it.stop = it.apply(actual)
    end
    return units ~= nil, it
  end

  return {check = rh_check, undo = rh_undo, finish = rh_end}
end

