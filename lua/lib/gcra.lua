-- lib/gcra.lua: kind "gc", the generic cell rate algorithm.
-- Included after lib/clock.lua and lib/reply.lua; defines locals only.
--
-- One number per (limit, subject): the theoretical arrival time (TAT). Each
-- unit of cost moves the TAT on by the emission interval T = period / rate;
-- a request passes if the new TAT is no more than burst * T ahead of now.
-- O(1) time and memory, and a smooth rate: the burst refills one unit every
-- T, with no window edge to crowd at.
--
-- T is often fractional (3 per 10 s is 3333333.33 us), so the TAT keeps a
-- fraction. An epoch instant in microseconds is about 1.8e15, where a double
-- resolves only a quarter of a microsecond, and rounding on every charge
-- adds up: a burst of 3 would admit 2. So the TAT is stored counted from
-- 2025-01-01 (BASE), where a double resolves a few nanoseconds for decades,
-- and arithmetic is done on its distance from now, a small number. Decisions
-- allow SLACK (0.1 us) for that rounding; T is at least 1 us (the client
-- refuses faster rates), so the slack is under a tenth of a unit.
--
-- While an override of the limit is in force, the TAT is stored with a
-- mark, "<TAT>|o", as a fixed window's counter is (lib/fixed_window.lua):
-- every script that writes the TAT knows whether one is in force, and
-- lua/override.lua marks or unmarks the stored TAT when one is set or
-- deleted. So the hit's own script (lua/hit_gcra.lua) reads the override's
-- hash only when the TAT is marked or missing.
--
-- Item arguments: burst, cost, flags, T (microseconds, possibly fractional).

local GC_BASE = 1735689600000000
local GC_SLACK = 0.1
local GC_MARK = '|o'

-- The stored TAT (nil if none), and whether it carries the mark.
local function gc_read(key)
  local stored = redis.call('GET', key)
  if not stored then
    return nil, false
  end
  local tat = tonumber(stored)
  if tat then
    return tat, false
  end
  return tonumber(string.match(stored, '^([^|]+)')), true
end

-- How far the stored TAT is ahead of now, in microseconds; 0 when behind.
local function gc_ahead(key, now)
  local stored = gc_read(key)
  if not stored then
    return 0
  end
  return math.max(stored - (now - GC_BASE), 0)
end

-- The TAT as stored: a number, or with the mark as text that reads back
-- exactly (17 significant digits hold every double).
local function gc_value(tat, marked)
  if marked then
    return string.format('%.17g', tat) .. GC_MARK
  end
  return tat
end

-- Units that fit with the TAT `ahead` of now.
local function gc_room(burst, interval, ahead)
  return math.floor((burst * interval - ahead + GC_SLACK) / interval)
end

-- The TAT's key expires at the end of the whole second holding TAT +
-- GRACE_MS, on the server's clock. The expiry is a function of the stored
-- TAT alone, and a key's expiry is never earlier than that function of its
-- value, so hit_gcra.lua, seeing the stored TAT, knows the key's expiry
-- without asking and sets it again only when a charge moves the TAT into a
-- later second: most charges keep the TTL, and formatting and setting an
-- expiry is a third of a hit's server time. Every writer of a TAT on the
-- server's clock must keep that promise: write PXAT gc_expiry(tat), or keep
-- an expiry that is already later.
local GC_SECOND = 1000000

local function gc_expiry(tat)
  return (GC_BASE + (math.floor(tat / GC_SECOND) + 1) * GC_SECOND) / 1000 + GRACE_MS
end

-- Stores a TAT `ahead` microseconds after now; a TAT not ahead is no state.
-- It lives at least GRACE_MS past the TAT; with client time the expiry is
-- relative, since the server's clock may disagree with the one deciding.
local function gc_store(key, now, ahead, client_now, marked)
  if ahead <= 0 then
    redis.call('DEL', key)
  elseif client_now == '' then
    local tat = now - GC_BASE + ahead
    redis.call('SET', key, gc_value(tat, marked), 'PXAT', gc_expiry(tat))
  else
    local tat = now - GC_BASE + ahead
    redis.call('SET', key, gc_value(tat, marked), 'PX', ms_kept(now + ahead, now))
  end
end

-- When `cost` could pass with the TAT `ahead` of now; 0 for never.
local function gc_retry(burst, interval, ahead, cost, now)
  if cost > burst then
    return 0
  end
  -- Rounded up, so a retry at exactly this instant passes.
  return now + math.max(math.ceil(ahead + (cost - burst) * interval - GC_SLACK), 0)
end

-- Made on first use in a run: most runs use one kind.
local function gc_kind()
  local function gc_check(keys, args, run)
    local key, burst, interval, now = keys[1], tonumber(args[1]), tonumber(args[4]), run.now
    local ahead = gc_ahead(key, now)
    local room = gc_room(burst, interval, ahead)
    local it = {room = room, used = burst - room, held = 0, stop = now + math.ceil(ahead)}
    function it.apply(grant)
      local after = ahead + grant * interval
      gc_store(key, now, after, run.client, args.overridden == true)
      return burst - gc_room(burst, interval, after), now + math.ceil(after)
    end
    function it.retry(cost)
      return gc_retry(burst, interval, ahead, cost, now)
    end
    return it
  end

  local function gc_undo(keys, args, run, grant)
    local key = keys[1]
    local ahead = gc_ahead(key, run.now) - grant * tonumber(args[4])
    gc_store(key, run.now, ahead, run.client, args.overridden == true)
  end

  return {check = gc_check, undo = gc_undo, refund = gc_undo}
end
