-- lib/gcra.lua: kind "gc", the generic cell rate algorithm.
-- Included by operation scripts; defines locals only.
--
-- One string per (limit, subject): the theoretical arrival time (TAT), in
-- integer microseconds. Each unit of cost moves the TAT on by the emission
-- interval T = period / rate; a request passes if the new TAT is no more
-- than burst * T ahead of now. O(1) time and memory, and a smooth rate: the
-- burst refills one unit every T, with no window edge to crowd at.
--
-- Item arguments: burst, cost, flags, T (microseconds, possibly fractional).

-- Float division can land a hair below a whole number of units.
local EPSILON = 1e-9

local function gc_check(keys, args, now)
  local key, burst, interval = keys[1], tonumber(args[1]), tonumber(args[4])
  local base = math.max(tonumber(redis.call('GET', key) or '0'), now)
  local room = math.floor((burst * interval - (base - now)) / interval + EPSILON)
  local it = {room = room, used = burst - room, held = 0, stop = base}
  function it.apply(grant)
    -- Rounded up: the stored TAT may only err on the side of caution.
    local tat = math.ceil(base + grant * interval)
    redis.call('SET', key, int_text(tat), 'PX', ms_kept(tat, now))
    return burst - math.floor((burst * interval - (tat - now)) / interval + EPSILON), tat
  end
  function it.retry(cost)
    if cost > burst then
      return 0
    end
    -- Rounded up, so a retry at exactly this instant passes.
    return math.max(math.ceil(base + cost * interval - burst * interval), now)
  end
  return it
end

local function gc_undo(keys, args, now, id, grant)
  local key, interval = keys[1], tonumber(args[4])
  local tat = tonumber(redis.call('GET', key) or '0')
  tat = math.ceil(math.max(tat - grant * interval, now))
  if tat > now then
    redis.call('SET', key, int_text(tat), 'PX', ms_kept(tat, now))
  else
    redis.call('DEL', key)
  end
end
