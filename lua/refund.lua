-- refund.lua: give back part of what a subject used, never below zero.
--
-- KEYS[1]  the request id's refund record, when ARGV[3] is not ''; then
--          the item's keys
-- ARGV[1]  client time in microseconds, or '' to read the server's TIME
-- ARGV[2]  amount to give back, in units
-- ARGV[3]  how long to remember the request id, milliseconds; '' keeps no
--          record (the caller never sends this call twice)
-- ARGV[4]  fingerprint of the refund (kind and amount)
-- ARGV[5]  1 (one item), then: kind, #keys, #args, args...
-- Reply    {code, now, status, used, held, stop, retry_at, grant} after the
--          refund; code 1 refunded, 2 replay of an earlier refund (nothing
--          given back again; the recorded reply, then the limit when it was
--          refunded), -1 now outside the planned windows (nothing
--          done; re-plan), -2 request id reused for another refund
-- Clock    server TIME, or ARGV[1] when the caller chose client time
-- Cost     O(1); O(amount log n) for a sliding log; O(log n + expired) for a
--          spend cap
--
-- Only the current window is refunded: usage in a closed window is already
-- gone. A spend cap's refund lowers committed spend, never its holds. A
-- refund re-sent by a transport retry must not give back twice, or the
-- limit would later admit more than it allows; so it is recorded like a
-- charge.
-- include: lib/items.lua
-- include: lib/check.lua
-- include: lib/replay.lua

local run = {now = clock_now(ARGV[1]), client = ARGV[1], id = ''}
local record, fingerprint, first_key = nil, ARGV[4], 1
if ARGV[3] ~= '' then
  record, first_key = KEYS[1], 2
  local replayed = replay_lookup(record, fingerprint, run.now)
  if replayed then
    return replayed
  end
end
local item = parse_items(first_key, 5, run.now)[1]
-- Check first: it confirms the planned window before anything changes.
if not check_items({item}, run) then
  return {-1, run.now}
end
KINDS[item.kind].refund(item.keys, item.args, run, tonumber(ARGV[2]))
-- The reply is the state after the refund, checked for a cost of zero: it
-- is allowed whenever the limit is not over.
item.args[2] = 0  -- a number, as parse_items leaves every argument
local reply = checked_reply({1, run.now}, check_items({item}, run), {item})
if record then
  replay_remember(record, tonumber(ARGV[3]), fingerprint, reply, {item})
end
return limits_reply(reply, {item})
