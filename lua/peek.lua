-- peek.lua: would these items fit now? Charges nothing.
--
-- KEYS[1..]  each item's keys, in item order (one hash slot)
-- ARGV[1]  client time in microseconds, or '' to read the server's TIME
-- ARGV[2]  number of items, then per item: kind, #keys, #args, args...
-- Reply    {code, now, then per item: status, used, held, stop, retry_at,
--          grant}; code 1 every item fits, 0 some would be denied, -1 now
--          outside the planned windows (re-plan)
-- Clock    server TIME, or ARGV[1] when the caller chose client time
-- Cost     as charge.lua without the writes; expired holds, leases and log
--          entries are pruned, which changes no decision
-- include: lib/items.lua
-- include: lib/check.lua

local run = {now = clock_now(ARGV[1]), client = ARGV[1], id = ''}
local items = parse_items(1, 2, run.now)
local checked, all = check_items(items, run)
if not checked then
  return {-1, run.now}
end
return limits_reply(checked_reply({all and 1 or 0, run.now}, checked, items), items)
