-- lib/guard.lua: an upstream's guard on one of its limits.
-- Included by lib/check.lua; defines locals only.
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
--   u  what the first window holds back until the provider first reports
--      (slow start, below), while it has not reported.
-- On a fixed window, a window's first guarded call opens it with the
-- outside use learned so far already charged, so a window does not open
-- with a burst into the provider's 429s. Learning is fast and forgetting is
-- slow: a shortfall is charged at once, when observed (observe.lua), and the
-- next window opens with all that was charged; a window in which every
-- observation showed spare room opens the next with at most 1/16 of the
-- limit less, and never less than the room seen; each window that passes
-- with no guarded call forgets another 1/16 of the limit.
-- The hash lives a day past its last write.

local GUARD_KEPT_MS = 86400000

-- Applies the guard to a checked item: a pause denies it, and a fixed
-- window opens with the outside use learned. `it` is the kind's checked
-- item; a fixed window's add charges its counter with no hold
-- (lib/fixed_window.lua).
local function guard_apply(item, it, run)
  local key = item.keys[#item.keys]
  local paused
  if item.kind == 'fw' or item.kind == 'hfw' then
    -- A fixed window's guard opens with the window: the learned outside use
    -- is charged into it.
    local args = item.args
    -- A window already open needs only the pause; one opening reads the rest.
    local g = redis.call('HMGET', key, 'p', 'w')
    local start, stop = args[4], args[5]  -- numbers (parse_items)
    -- Arithmetic parses the text once; tonumber() parses it twice.
    local w = g[2] and g[2] + 0
    if w ~= stop then
      -- Outside use to open the window [start, stop) with, given the guard as
      -- stored: what window w learned (c, less the spare room it showed), less
      -- one step for each window between w and this one that had no guarded
      -- call. Made here, where a window opens, not on every run.
      local function guard_carried(limit, start, stop)
        if not w then
          return 0
        end
        local seen = redis.call('HMGET', key, 'c', 's')
        local c, s = tonumber(seen[1]) or 0, tonumber(seen[2])
        local step = math.ceil(limit / 16)
        local learned = c
        if s then
          learned = c - math.min(s, step)
        end
        local idle = math.max(math.floor((start - w) / (stop - start)), 0)
        return math.max(learned - idle * step, 0)
      end
      local x = guard_carried(tonumber(args[1]), start, stop)
      -- Slow start (the SLOW_START flag, Upstream's slow_start): before the
      -- provider has reported anything, the first window holds back half of
      -- the limit, so a fleet's first burst does
      -- not meet outside use it cannot yet know of; the first observation
      -- gives the half back (observe.lua). Only the first window does this.
      local u = 0
      if not g[2] and math.floor(tonumber(args[3]) / SLOW_START) % 2 == 1 then
        u = math.ceil(tonumber(args[1]) / 2)
      end
      if x + u > 0 then
        it.add(x + u)
        it.room, it.used = it.room - x - u, it.used + x + u
      end
      redis.call('HSET', key, 'c', x, 'w', stop, 'u', u)
      redis.call('HDEL', key, 's')
      redis.call('PEXPIRE', key, GUARD_KEPT_MS)
    end
    paused = g[1]
  else
    paused = redis.call('HGET', key, 'p')
  end
  paused = tonumber(paused)
  if paused and paused > run.now then
    -- The kind's retry assumes the cost did not fit; when it did, only the
    -- pause stands in the way, and its end is when to try again (a window's
    -- end could be hours later).
    local room, retry = it.room, it.retry
    it.room = -1
    function it.retry(cost)
      if cost <= room then
        return paused
      end
      local later = retry(cost)
      return later == 0 and 0 or math.max(paused, later)
    end
  end
end
