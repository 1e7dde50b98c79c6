-- lib/sliding_log.lua: kind "sl", an exact sliding window.
-- Included after lib/clock.lua and lib/reply.lua; defines locals only.
--
-- One sorted set per (limit, subject): a member per unit of cost admitted,
-- scored by when. Entries older than the window are pruned on every touch.
-- Exact, and O(limit) memory: the client refuses limits above a bound
-- (10,000 by default), because a large sorted set makes each prune and
-- each insert slower and can stall the server for everyone.
--
-- Members are "<id>:<n>", unique per request and unit, so undoing a charge
-- removes exactly its own entries.
--
-- Item arguments: limit, cost, flags, window length in microseconds.

-- Made on first use in a run: most runs use one kind.
local function sl_kind()
  -- ZADD in slices: unpack() of a very long list overflows Lua's C stack.
  local SLICE = 500

  local function sl_check(keys, args, run)
    local key, limit, length, now, id = keys[1], tonumber(args[1]), tonumber(args[4]),
      run.now, run.id
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now - length)
    local used = redis.call('ZCARD', key)
    local newest = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
    local stop = newest[2] and tonumber(newest[2]) + length or now
    local it = {room = limit - used, used = used, held = 0, stop = stop}
    function it.apply(grant)
      for first = 1, grant, SLICE do
        local batch = {}
        for n = first, math.min(first + SLICE - 1, grant) do
          batch[#batch + 1] = now
          batch[#batch + 1] = id .. ':' .. int_text(now) .. ':' .. n
        end
        redis.call('ZADD', key, unpack(batch))
      end
      if grant > 0 then
        redis.call('PEXPIRE', key, ms_kept(now + length, now))
        stop = now + length
      end
      return used + grant, stop
    end
    function it.retry(cost)
      if cost > limit then
        return 0
      end
      -- The entry whose expiry makes room for `cost`: an entry scored s is
      -- pruned once now - length >= s.
      local nth = redis.call('ZRANGE', key, used + cost - limit - 1, used + cost - limit - 1,
        'WITHSCORES')
      return tonumber(nth[2]) + length
    end
    return it
  end

  local function sl_undo(keys, args, run, grant, stop)
    -- A charge's stop is the instant it was charged plus the window.
    local at = int_text(stop - tonumber(args[4]))
    for first = 1, grant, SLICE do
      local batch = {}
      for n = first, math.min(first + SLICE - 1, grant) do
        batch[#batch + 1] = run.id .. ':' .. at .. ':' .. n
      end
      redis.call('ZREM', keys[1], unpack(batch))
    end
  end

  local function sl_refund(keys, args, run, amount)
    if amount > 0 then
      redis.call('ZPOPMAX', keys[1], amount)
    end
  end

  return {check = sl_check, undo = sl_undo, refund = sl_refund}
end
