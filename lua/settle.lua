-- settle.lua: charge a reservation's actual cost and drop its hold.
--
-- KEYS[1]  the cap's hash; KEYS[2] its holds; KEYS[3] the holds' amounts
-- KEYS[4]  the reservation's outcome record
-- ARGV[1]  client time in microseconds, or '' to read the server's TIME
-- ARGV[2]  the reservation id
-- ARGV[3]  actual cost, in units
-- ARGV[4]  how long to remember the outcome, milliseconds
-- ARGV[5]  the cap's limit, in units
-- ARGV[6..9]  planned window boundaries b1 < b2 < b3 < b4
-- ARGV[10]  an id for this call, so a transport re-send replays its reply
-- Reply    {code, now, status, used, held, stop, retry_at, grant}; code 1
--          settled, 2 already settled (nothing charged), 3 settled after a
--          release, 4 settled after the hold expired, -1 now outside the
--          planned windows (nothing done; re-plan)
-- Clock    server TIME, or ARGV[1] when the caller chose client time
-- Cost     O(log n + expired holds)
--
-- The actual cost is charged even past the limit, and even when the hold is
-- gone (released or expired): the money was spent, so the ledger records it.
-- A second settle finds the outcome record and charges nothing; a re-send of
-- the same settle (same call id) gets its original reply back.
-- include: lib/clock.lua
-- include: lib/fixed_window.lua
-- include: lib/spend.lua
-- include: lib/reply.lua

local now = clock_now(ARGV[1])
local keys = {KEYS[1], KEYS[2], KEYS[3]}
local outcome, id, actual = KEYS[4], ARGV[2], tonumber(ARGV[3])
local args = {ARGV[5], ARGV[3], '0', ARGV[6], ARGV[7], ARGV[8], ARGV[9]}
if not sc_check(keys, args, now) then
  return {-1, now}
end

local call = ARGV[10]
local before, by, was, charged = outcome_read(outcome)
local code, grant = 2, 0
if before == 'settled' and by == call then
  code, grant = was, charged  -- a re-send of this very settle: its reply again
elseif before ~= 'settled' then
  if holds_drop(keys, id) then
    code = 1
  elseif before == 'released' and was ~= 4 then
    code = 3
  else
    -- The hold expired, whether or not a release found it gone since.
    code = 4
  end
  sc_check(keys, args, now).apply(actual)
  outcome_write(outcome, 'settled', call, code, actual, tonumber(ARGV[4]))
  grant = actual
end
local it = sc_check(keys, args, now)
it.status, it.grant = 1, grant
local reply = {code, now}
item_reply(reply, it, it.used, it.stop, 0)
return reply
