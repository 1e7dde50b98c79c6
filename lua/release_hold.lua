-- release_hold.lua: drop a rate limit's reservation and charge nothing.
--
-- KEYS[1]  the reservation's outcome record; then the hold item's keys: the
--          rate limit's state, its holds, their charges (lib/rate_hold.lua)
-- ARGV[1]  client time in microseconds, or '' to read the server's TIME
-- ARGV[2]  the reservation id
-- ARGV[3]  how long to remember the outcome, milliseconds
-- ARGV[4]  an id for this call, so a transport re-send replays its reply
-- ARGV[5]  1 (one item), then: kind (hfw, hgc, hsw), #keys, #args, args...
-- Reply    {code, now, status, used, held, stop, retry_at, grant}; code 1
--          released, 2 already settled (nothing changed), 3 already
--          released, 4 the hold had expired, -1 now outside the planned
--          window (nothing done; re-plan)
-- Clock    server TIME, or ARGV[1] when the caller chose client time
-- Cost     O(log n + expired holds)
--
-- The estimate charged when the hold was taken is given back where it still
-- counts: in its window, or while GCRA's arrival time is still ahead.
-- include: lib/items.lua
-- include: lib/item_reply.lua
-- include: lib/outcome.lua

local run = {now = clock_now(ARGV[1]), client = ARGV[1], id = ARGV[2]}
local outcome, call = KEYS[1], ARGV[4]
local item = parse_items(2, 5, run.now)[1]
local kind = KINDS[item.kind]
local it = kind.check(item.keys, item.args, run)
if not it then
  return {-1, run.now}
end

local before, by, was = outcome_read(outcome)
local code = before == 'settled' and 2 or 3
if before == 'released' and by == call then
  code = was  -- a re-send of this very release: its reply again
elseif not before then
  local held
  held, it = kind.finish(item.keys, item.args, run, run.id, nil, it)
  code = held and 1 or 4
  outcome_write(outcome, 'released', call, code, 0, ARGV[3])
end
local reply = {code, run.now}
item_reply(reply, FITS, it.used, it.held, it.stop, 0, 0)
return limits_reply(reply, {item})
