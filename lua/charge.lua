-- charge.lua: check every item, then charge all of them or none.
--
-- KEYS[1]  the request id's record, when ARGV[2] is not ''; then each
--          item's keys, in item order (one hash slot)
-- ARGV[1]  client time in microseconds, or '' to read the server's TIME
-- ARGV[2]  how long to remember the request id, milliseconds; '' keeps no
--          record (the caller never sends this call twice)
-- ARGV[3]  the request id (also names leases, holds and log entries)
-- ARGV[4]  fingerprint of the items' kinds and costs
-- ARGV[5]  number of items, then per item: kind, #keys, #args, args...
-- Reply    {code, now, then per item: status, used, held, stop, retry_at,
--          grant}; code 1 all charged, 0 nothing charged (some item
--          denied), 2 replay of an earlier charge (the recorded reply, then
--          each item's limit when charged), -1 now outside the
--          planned windows (nothing done; re-plan), -2 request id reused
--          for other items (nothing done). Item status 1 fits, 0 denied,
--          3 over its limit but let through by shadow mode.
-- Clock    server TIME, or ARGV[1] when the caller chose client time
-- Cost     O(items) plus each kind's own: O(1) for fw, sc, gc, sw; O(log n)
--          per lease for cc; O(log n + expired) for holds; O(cost log n)
--          for sl
--
-- Used for acquire, reservations, leases, hits that carry the caller's
-- request id, and spend-cap charges that must read the holds; a plain hit
-- runs its kind's own script (hit_*.lua).
-- include: lib/items.lua
-- include: lib/check.lua

local run = {now = clock_now(ARGV[1]), client = ARGV[1], id = ARGV[3]}
local record, fingerprint, first_key = nil, ARGV[4], 1
local remember
if ARGV[2] ~= '' then
  record, first_key = KEYS[1], 2
  -- The request id's functions, made only for a call that keeps a record:
  -- every `local function` at a script's top level is a closure made on
  -- each run, used or not.
  -- lazy: lib/replay.lua
  remember = replay_remember
  local replayed = replay_lookup(record, fingerprint, run.now)
  if replayed then
    return replayed
  end
end

local items = parse_items(first_key, 5, run.now)
local checked, all = check_items(items, run)
if not checked then
  return {-1, run.now}
end
if not all then
  return limits_reply(checked_reply({0, run.now}, checked, items), items)
end
local reply = {1, run.now}
for _, it in ipairs(checked) do
  local used, stop = it.apply(it.grant)
  item_reply(reply, it.status, used, it.held, stop, 0, it.grant)
end
if record then
  remember(record, tonumber(ARGV[2]), fingerprint, reply, items)
end
return limits_reply(reply, items)
