-- observe.lua: correct an upstream's limit by what its provider reports left.
--
-- KEYS     the item's keys, the guard's hash last (lib/guard.lua)
-- ARGV[1]  client time in microseconds, or '' to read the server's TIME
-- ARGV[2]  what the provider reports remaining, in the limit's units
-- ARGV[3]  1 (one item), then: kind (fw, gc, sw), #keys, #args, args...
--          with the GUARD flag
-- Reply    {code, now, status, used, held, stop, retry_at, grant} after
--          the correction; code 1 corrected (grant: the units charged), 0
--          nothing to correct, -1 now outside the planned window (nothing
--          done; re-plan)
-- Clock    server TIME, or ARGV[1] when the caller chose client time
-- Cost     O(1)
--
-- It only ever tightens: when the fleet's count leaves more room than the
-- provider reports, the difference is charged, as use by someone outside
-- the fleet, so that what remains is at most what the provider said. More
-- room reported than counted gives nothing back now; on a fixed window it
-- lets the next window open with a little less outside use (lib/guard.lua).
-- The first report also ends the first window's slow start.
-- include: lib/items.lua
-- include: lib/check.lua
-- include: lib/fixed_window.lua

local run = {now = clock_now(ARGV[1]), client = ARGV[1], id = ''}
local item = parse_items(1, 3, run.now)[1]
local checked = check_items({item}, run)
if not checked then
  return {-1, run.now}
end
local it = checked[1]
local key = item.keys[#item.keys]
local windowed = item.kind == 'fw'
if windowed then
  -- The provider's first report ends the slow start: the half the first
  -- window held back is given back before the report is weighed.
  local u = tonumber(redis.call('HGET', key, 'u')) or 0
  if u > 0 then
    if tonumber(redis.call('HGET', key, 'w')) == tonumber(item.args[5]) then
      fw_lower(item.keys[1], u)
      it.used = math.max(it.used - u, 0)
    end
    redis.call('HSET', key, 'u', 0)
  end
end
local short = tonumber(item.args[1]) - it.used - it.held - tonumber(ARGV[2])
local code, grant, used, stop = 0, 0, it.used, it.stop
if short > 0 then
  code, grant = 1, short
  used, stop = it.apply(short)
  if windowed then
    redis.call('HINCRBY', key, 'c', short)
    redis.call('HSET', key, 's', 0)
  end
elseif windowed then
  local spare = tonumber(redis.call('HGET', key, 's'))
  if not spare or -short < spare then
    redis.call('HSET', key, 's', -short)
  end
end
if windowed then
  redis.call('PEXPIRE', key, GUARD_KEPT_MS)
end
local reply = {code, run.now}
item_reply(reply, FITS, used, it.held, stop, 0, grant)
return limits_reply(reply, {item})
