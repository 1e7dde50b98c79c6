-- settle_hold.lua: charge a rate limit's reservation its actual cost.
--
-- KEYS[1]  the reservation's outcome record; then the hold item's keys: the
--          rate limit's state, its holds, their charges (lib/rate_hold.lua)
-- ARGV[1]  client time in microseconds, or '' to read the server's TIME
-- ARGV[2]  the reservation id
-- ARGV[3]  actual cost, in units
-- ARGV[4]  how long to remember the outcome, milliseconds
-- ARGV[5]  an id for this call, so a transport re-send replays its reply
-- ARGV[6]  1 (one item), then: kind (hfw, hgc, hsw), #keys, #args, args...
-- Reply    {code, now, status, used, held, stop, retry_at, grant}; code 1
--          settled, 2 already settled (nothing charged), 3 settled after a
--          release, 4 settled after the hold expired, -1 now outside the
--          planned window (nothing done; re-plan)
-- Clock    server TIME, or ARGV[1] when the caller chose client time
-- Cost     O(log n + expired holds)
--
-- The estimate charged when the hold was taken is given back where it still
-- counts (the same window; GCRA's arrival time while it is ahead), and the
-- actual cost is charged in full, past the limit if need be: the units were
-- used, so later calls are denied until there is room again. A second
-- settle finds the outcome record and charges nothing; a re-send of the
-- same settle (same call id) gets its original reply back.
-- include: lib/items.lua
-- include: lib/outcome.lua

local run = {now = clock_now(ARGV[1]), client = ARGV[1], id = ARGV[2]}
local outcome, actual, call = KEYS[1], tonumber(ARGV[3]), ARGV[5]
local items = parse_items(2, 6, run.now)
local item = items[1]
local kind = KINDS[item.kind]
local it = kind.check(item.keys, item.args, run)
if not it then
  return {-1, run.now}
end

local before, by, was, charged = outcome_read(outcome)
local code, grant = 2, 0
if before == 'settled' and by == call then
  code, grant = was, charged  -- a re-send of this very settle: its reply again
elseif before ~= 'settled' then
  local held
  held, it = kind.finish(item.keys, item.args, run, run.id, actual, it)
  if held then
    code = 1
  elseif before == 'released' and was ~= 4 then
    code = 3
  else
    code = 4
  end
  outcome_write(outcome, 'settled', call, code, actual, ARGV[4])
  grant = actual
end
-- The item's six integers (lib/item_reply.lua) in the constructor: a table
-- grown an entry at a time is reallocated at 4 and 8 entries.
local reply = {code, run.now, FITS, it.used, it.held, it.stop, 0, grant}
return limits_reply(reply, items)
