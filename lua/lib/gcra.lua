-- lib/gcra.lua: kind "gc", the generic cell rate algorithm.
-- Included by operation scripts; defines locals only.
--
-- One string per (limit, subject): the theoretical arrival time (TAT). Each
-- unit of cost moves the TAT on by the emission interval T = period / rate;
-- a request passes if the new TAT is no more than burst * T ahead of now.
-- O(1) time and memory, and a smooth rate: the burst refills one unit every
-- T, with no window edge to crowd at.
--
-- T is often fractional (3 per 10 s is 3333333.33 us). An epoch instant in
-- microseconds is about 1.8e15, where a double resolves only a quarter of a
-- microsecond, and rounding the TAT to whole microseconds on every charge
-- adds up: a burst of 3 would admit 2. So the TAT is stored as whole
-- microseconds and a fraction ("1764000000123456.333333333"), and all
-- arithmetic is done on its distance from now, a small number that doubles
-- hold to far below a microsecond.
--
-- Item arguments: burst, cost, flags, T (microseconds, possibly fractional).

-- Made on first use in a run: every run defines its local functions afresh,
-- and most runs use one kind.
local function gc_kind()
  -- Float division can land a hair below a whole number of units.
  local EPSILON = 1e-9

  -- How far the stored TAT is ahead of now, in microseconds (may be negative).
  local function gc_ahead(key, now)
    local stored = redis.call('GET', key)
    if not stored then
      return 0
    end
    local whole, frac = string.match(stored, '^(%d+)%.?(%d*)$')
    return (tonumber(whole) - now) + tonumber('0.' .. (frac ~= '' and frac or '0'))
  end

  -- Stores a TAT `ahead` microseconds after now; a TAT in the past is no state.
  local function gc_store(key, now, ahead)
    if ahead <= 0 then
      redis.call('DEL', key)
      return
    end
    local whole = math.floor(ahead)
    local text = int_text(now + whole) .. string.format('.%09d', math.floor((ahead - whole) * 1e9))
    redis.call('SET', key, text, 'PX', ms_kept(now + math.ceil(ahead), now))
  end

  local function gc_check(keys, args, now)
    local key, burst, interval = keys[1], tonumber(args[1]), tonumber(args[4])
    local base = math.max(gc_ahead(key, now), 0)
    local slack = math.min(EPSILON, 1e-3 / interval)
    local room = math.floor((burst * interval - base) / interval + slack)
    local it = {room = room, used = burst - room, held = 0, stop = now + math.ceil(base)}
    function it.apply(grant)
      local ahead = base + grant * interval
      gc_store(key, now, ahead)
      local left = math.floor((burst * interval - ahead) / interval + slack)
      return burst - left, now + math.ceil(ahead)
    end
    function it.retry(cost)
      if cost > burst then
        return 0
      end
      -- Rounded up, so a retry at exactly this instant passes.
      return now + math.max(math.ceil(base + cost * interval - burst * interval - EPSILON), 0)
    end
    return it
  end

  local function gc_undo(keys, args, now, id, grant)
    local key = keys[1]
    gc_store(key, now, gc_ahead(key, now) - grant * tonumber(args[4]))
  end

  local function gc_refund(keys, args, now, amount)
    gc_undo(keys, args, now, nil, amount)
  end

  return {check = gc_check, undo = gc_undo, refund = gc_refund}
end
