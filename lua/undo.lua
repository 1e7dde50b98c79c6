-- undo.lua: take back the charges of an earlier acquire, exactly.
--
-- KEYS[1]  the request id's record, written by charge.lua
-- KEYS[2..]  each item's keys, in item order (one hash slot)
-- ARGV[1]  client time in microseconds, or '' to read the server's TIME
-- ARGV[2]  the request id the acquire used
-- ARGV[3]  number of items, then per item: kind, #keys, #args, args...
-- Reply    {code, now, then per item after the undo: status, used, held,
--          stop, retry_at, grant}; code 1 undone, 0 nothing recorded
--          (never charged, or already undone), -1 now outside the planned
--          windows (re-plan; the undo itself is done): then {-1, now, 1 or
--          0}, whether something was undone
-- Clock    server TIME, or ARGV[1] when the caller chose client time
-- Cost     O(items); O(grant) for a sliding log
--
-- Used when an acquire over several hash slots is denied by a later slot:
-- the earlier slots' charges come back. The record says what each item
-- granted and in which window; a window that has since closed owes nothing
-- back. Deleting the record makes the undo idempotent and lets the same
-- request id be evaluated afresh, as a denied request would be.
-- include: lib/items.lua
-- include: lib/check.lua
-- include: lib/replay.lua

local run = {now = clock_now(ARGV[1]), client = ARGV[1], id = ARGV[2]}
local record = KEYS[1]
local items = parse_items(2, 3, run.now)
local charged = replay_items(record, #items)
local code = 0
if charged then
  for i, item in ipairs(items) do
    KINDS[item.kind].undo(item.keys, item.args, run, charged[i].grant, charged[i].stop)
  end
  redis.call('DEL', record)
  code = 1
end
local checked = check_items(items, run)
if not checked then
  -- The undo above is done and its record gone; a re-plan finds nothing to
  -- undo and only reports the state.
  return {-1, run.now, code}
end
return limits_reply(checked_reply({code, run.now}, checked, items), items)
