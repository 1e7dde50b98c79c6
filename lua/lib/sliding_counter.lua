-- lib/sliding_counter.lua: kind "sw", an approximate sliding window.
-- Included after lib/clock.lua and lib/reply.lua; defines locals only.
--
-- One hash per (limit, subject): w = start of the current epoch-aligned
-- window, c = its count, p = the previous window's count. The usage over
-- the last window length is estimated as p * (share of the previous window
-- still inside it) + c. O(1). The estimate is exact when the previous
-- window's traffic was spread evenly; docs/algorithms.md gives the bound.
--
-- Item arguments: limit, cost, flags, window length in microseconds.

-- Made on first use in a run: most runs use one kind.
local function sw_kind()
  local function sw_state(key, now, length)
    local start = now - now % length
    local state = redis.call('HMGET', key, 'w', 'c', 'p')
    local stored, count = tonumber(state[1]), tonumber(state[2] or '0')
    if stored and stored >= start then
      -- A clock behind the writer's keeps the newer window in force.
      return stored, count, tonumber(state[3] or '0')
    end
    if stored == start - length then
      return start, 0, count
    end
    return start, 0, 0
  end

  local function sw_check(keys, args, run)
    local key, limit, length, now = keys[1], tonumber(args[1]), tonumber(args[4]), run.now
    local start, count, previous = sw_state(key, now, length)
    local weight = (length - math.max(now - start, 0)) / length
    local estimate = previous * weight + count
    local eps = math.min(1e-9, 0.5 / length)
    local function drained(c)
      -- When the estimate falls to zero with no new traffic.
      if c > 0 then
        return start + 2 * length
      end
      return previous > 0 and start + length or now
    end
    local it = {
      room = math.floor(limit - estimate + eps),
      used = math.ceil(estimate - eps),
      held = 0,
      stop = drained(count),
    }
    function it.apply(grant)
      redis.call('HSET', key, 'w', start, 'c', count + grant, 'p', previous)
      redis.call('PEXPIRE', key, ms_kept(start + 2 * length, now))
      return math.ceil(estimate + grant - eps), drained(count + grant)
    end
    function it.retry(cost)
      if cost > limit then
        return 0
      end
      -- In this window the estimate falls as the previous window slides out.
      if count + cost <= limit and previous > 0 then
        return start + math.ceil(length - (limit - count - cost) * length / previous)
      end
      -- Otherwise in the next, where this window's count is the one sliding out.
      local at = start + length
      if count > 0 and cost > limit - count then
        at = start + math.ceil(2 * length - (limit - cost) * length / count)
      end
      return math.max(at, now)
    end
    return it
  end

  local function sw_lower(keys, start, amount)
    local state = redis.call('HMGET', keys[1], 'w', 'c')
    if tonumber(state[1]) == start then
      redis.call('HSET', keys[1], 'c', math.max(tonumber(state[2]) - amount, 0))
    end
  end

  local function sw_undo(keys, args, run, grant, stop)
    -- A charge's stop is its window start plus two lengths. Only a window
    -- still open owes anything back: once it has closed its count slides
    -- out like any other, whether or not a later write has rolled the hash
    -- on yet (it still names the closed window until one does).
    local length = tonumber(args[4])
    local start = stop - 2 * length
    if start >= run.now - run.now % length then
      sw_lower(keys, start, grant)
    end
  end

  local function sw_refund(keys, args, run, amount)
    local length = tonumber(args[4])
    local start = run.now - run.now % length
    local stored = tonumber(redis.call('HGET', keys[1], 'w'))
    sw_lower(keys, math.max(start, stored or start), amount)
  end

  return {check = sw_check, undo = sw_undo, refund = sw_refund}
end
