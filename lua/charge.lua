-- charge.lua: check every item, then charge all of them or none.
--
-- KEYS[1]  the request id's record
-- KEYS[2..]  each item's keys, in item order (one hash slot)
-- ARGV[1]  client time in microseconds, or '' to read the server's TIME
-- ARGV[2]  how long to remember the request id, milliseconds
-- ARGV[3]  the request id (also names leases, holds and log entries)
-- ARGV[4]  fingerprint of the items' kinds and costs
-- ARGV[5]  number of items, then per item: kind, #keys, #args, args...
-- Reply    {code, now, then per item: status, used, held, stop, retry_at,
--          grant}; code 1 all charged, 0 nothing charged (some item
--          denied), 2 replay of an earlier charge, -1 now outside the
--          planned windows (nothing done; re-plan), -2 request id reused
--          for other items (nothing done). Item status 1 fits, 0 denied,
--          3 over its limit but let through by shadow mode.
-- Clock    server TIME, or ARGV[1] when the caller chose client time
-- Cost     O(items) plus each kind's own: O(1) for fw, sc, gc, sw; O(log n)
--          per lease for cc; O(log n + expired) for holds; O(cost log n)
--          for sl
-- include: lib/items.lua
-- include: lib/replay.lua

local now = clock_now(ARGV[1])
local record, id, fingerprint = KEYS[1], ARGV[3], ARGV[4]

local replayed = replay_lookup(record, fingerprint, now)
if replayed then
  return replayed
end

local checked, all = check_items(parse_items(2, 5), now, id)
if not checked then
  return {-1, now}
end
if not all then
  return checked_reply({0, now}, checked)
end
local reply = {1, now}
for _, it in ipairs(checked) do
  local used, stop = it.apply(it.grant)
  item_reply(reply, it, used, stop, 0)
end
replay_remember(record, tonumber(ARGV[2]), fingerprint, reply)
return reply
