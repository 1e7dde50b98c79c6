-- lib/guard.lua: an upstream's guard on one of its limits.
-- Included by lib/items.lua after the kinds; defines locals only.
--
-- An item flagged GUARD (lib/reply.lua) is a limit an upstream (a model
-- provider) shares with the rest of the world; its last key is one hash per
-- (limit, upstream) with what the fleet knows beyond its own counting:
--   p  paused until this instant (microseconds): the provider said 429 or
--      503 with Retry-After; every guarded decision is denied until then;
--   w  the window (its end, microseconds) the fields below describe;
--   c  units charged into window w for use the fleet did not make itself
--      (other software spending from the same key), as the provider's
--      figures revealed it;
--   s  the least room the provider reported beyond the fleet's own count in
--      window w, over every observation (absent: none observed);
--   x  what window w opened with: the outside use learned from earlier
--      windows.
-- On a fixed window, a window's first guarded call opens it with the
-- outside use learned so far already charged, so a window does not open
-- with a burst into the provider's 429s. Learning is fast and forgetting is
-- slow: a shortfall is charged at once, when observed (observe.lua), and the
-- next window opens with all that was charged; a window in which every
-- observation showed spare room opens the next with at most 1/16 of the
-- limit less, and never less than the room seen.
-- The hash lives a day past its last write.

local GUARD_KEPT_MS = 86400000

local function guarded(flags)
  return math.floor(flags / GUARD) % 2 == 1
end

-- Outside use to open window `stop` with, given the guard as stored.
local function guard_carried(g, limit, start)
  local x, c, w, s = tonumber(g[2]) or 0, tonumber(g[3]) or 0, tonumber(g[4]), tonumber(g[5])
  local step = math.ceil(limit / 16)
  if w == start then
    -- The window just ended: it taught c, less what it showed spare.
    if s then
      return math.max(c - math.min(s, step), 0)
    end
    return c
  end
  -- Windows passed with no guarded call: forget one step.
  return math.max(x - step, 0)
end

-- Opens a fixed window's guard: charges the learned outside use into it.
-- `it` is the kind's checked item; returns the guard's fields.
local function guard_open(key, counter, args, it, run)
  local g = redis.call('HMGET', key, 'p', 'x', 'c', 'w', 's')
  local start, stop = tonumber(args[4]), tonumber(args[5])
  if tonumber(g[4]) ~= stop then
    local x = guard_carried(g, tonumber(args[1]), start)
    if x > 0 then
      it.add(x)
      it.room, it.used = it.room - x, it.used + x
    end
    redis.call('HSET', key, 'x', x, 'c', x, 'w', stop)
    redis.call('HDEL', key, 's')
    redis.call('PEXPIRE', key, GUARD_KEPT_MS)
    g[2], g[3], g[4], g[5] = x, x, stop, false
  end
  return g
end

-- Applies the guard to a checked item of kind `kind`: a pause denies it,
-- and a fixed window opens with the outside use learned.
local function guard_apply(item, it, run)
  local key = item.keys[#item.keys]
  local g
  if item.kind == 'fw' or item.kind == 'hfw' then
    g = guard_open(key, item.keys[1], item.args, it, run)
  else
    g = redis.call('HMGET', key, 'p')
  end
  local paused = tonumber(g[1])
  if paused and paused > run.now then
    it.room = -1
    local retry = it.retry
    function it.retry(cost)
      return math.max(paused, retry(cost))
    end
  end
end
