-- lib/concurrency.lua: kind "cc", leases on an in-flight cap.
-- Included by operation scripts; defines locals only.
--
-- One sorted set per (limit, subject): a member per lease, scored by when it
-- expires. Expired leases are pruned on every touch, so a holder that dies
-- frees its slot after its lease, with no cleanup job. O(log n) per lease.
--
-- Item arguments: limit, cost (always 1), flags, lease length in
-- microseconds.

local function cc_prune(key, now)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
end

-- Keeps the set until its last lease ends.
local function cc_keep(key, now)
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if last[2] then
    redis.call('PEXPIRE', key, ms_kept(tonumber(last[2]), now))
  end
end

-- Made on first use in a run: most runs use one kind.
local function cc_kind()
  local function cc_check(keys, args, run)
    local key, limit, now = keys[1], tonumber(args[1]), run.now
    cc_prune(key, now)
    local used = redis.call('ZCARD', key)
    local function first_free(n)
      -- The nth earliest expiry (1-based), or now if fewer leases exist.
      local nth = redis.call('ZRANGE', key, n - 1, n - 1, 'WITHSCORES')
      return nth[2] and tonumber(nth[2]) or now
    end
    local it = {room = limit - used, used = used, held = 0, stop = first_free(used)}
    function it.apply(grant)
      if grant > 0 then
        redis.call('ZADD', key, now + tonumber(args[4]), run.id)
        cc_keep(key, now)
      end
      used = redis.call('ZCARD', key)
      return used, first_free(used)
    end
    function it.retry(cost)
      if cost > limit then
        return 0
      end
      return first_free(used + cost - limit)
    end
    return it
  end

  local function cc_undo(keys, args, run)
    redis.call('ZREM', keys[1], run.id)
  end

  return {check = cc_check, undo = cc_undo}
end
