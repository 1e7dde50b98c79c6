-- refund.lua: give back part of what a subject used, never below zero.
--
-- KEYS[1..]  the item's keys
-- ARGV[1]  client time in microseconds, or '' to read the server's TIME
-- ARGV[2]  amount to give back, in units
-- ARGV[3]  1 (one item), then: kind, #keys, #args, args...
-- Reply    {code, now, status, used, held, stop, retry_at, grant} after the
--          refund; code 1, or -1 now outside the planned windows (nothing
--          done; re-plan)
-- Clock    server TIME, or ARGV[1] when the caller chose client time
-- Cost     O(1); O(amount log n) for a sliding log
--
-- Only the current window is refunded: usage in a closed window is already
-- gone. A spend cap's refund lowers committed spend, never its holds.
-- include: lib/items.lua

local now = clock_now(ARGV[1])
local item = parse_items(1, 3)[1]
-- Check first: it confirms the planned window before anything changes.
if not check_items({item}, now, '') then
  return {-1, now}
end
KINDS[item.kind].refund(item.keys, item.args, now, tonumber(ARGV[2]))
return checked_reply({1, now}, check_items({item}, now, ''))
