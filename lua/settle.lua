-- settle.lua: charge a reservation's actual cost and drop its hold.
--
-- KEYS[1]  the cap's spend in the current window; KEYS[2] its holds;
--          KEYS[3] the holds' amounts (lib/spend.lua)
-- KEYS[4]  the reservation's outcome record
-- KEYS[5]  the cap's override for the subject (lib/override.lua)
-- ARGV[1]  client time in microseconds, or '' to read the server's TIME
-- ARGV[2]  the reservation id
-- ARGV[3]  actual cost, in units
-- ARGV[4]  how long to remember the outcome, milliseconds
-- ARGV[5]  the cap's limit, in units
-- ARGV[6]  the current window's start, ARGV[7] its end, microseconds
-- ARGV[8]  an id for this call, so a transport re-send replays its reply
-- Reply    {code, now, status, used, held, stop, retry_at, grant}, and
--          the override's limit last while one is in force; code 1
--          settled, 2 already settled (nothing charged), 3 settled after a
--          release, 4 settled after the hold expired, -1 now outside the
--          planned window (nothing done; re-plan)
-- Clock    server TIME, or ARGV[1] when the caller chose client time
-- Cost     O(log n + expired holds)
--
-- The actual cost is charged even past the limit, and even when the hold is
-- gone (released or expired): the money was spent, so the ledger records it.
-- A second settle finds the outcome record and charges nothing; a re-send of
-- the same settle (same call id) gets its original reply back.
-- include: lib/clock.lua
-- include: lib/reply.lua
-- include: lib/item_reply.lua
-- include: lib/spend.lua
-- include: lib/outcome.lua
-- include: lib/override.lua

local run = {now = clock_now(ARGV[1]), client = ARGV[1]}
local keys = {KEYS[1], KEYS[2], KEYS[3]}
local outcome, id, actual = KEYS[4], ARGV[2], tonumber(ARGV[3])
local args = {ARGV[5], ARGV[3], '0', ARGV[6], ARGV[7]}
-- The report is against the limit in force: an override's, while one is.
local ovr = ovr_read(KEYS[5], run.now)
if ovr then
  args[1] = ovr[1]
end
if not spend_state(keys, args, run) then
  return {-1, run.now}
end

local call = ARGV[8]
local before, by, was, charged = outcome_read(outcome)
local code, grant = 2, 0
if before == 'settled' and by == call then
  code, grant = was, charged  -- a re-send of this very settle: its reply again
elseif before ~= 'settled' then
  if holds_drop(keys, id, run.now) then
    code = 1
  elseif before == 'released' and was ~= 4 then
    code = 3
  else
    -- The hold expired, whether or not a release found it gone since.
    code = 4
  end
  local it = spend_state(keys, args, run)
  it.used = it.used + actual
  it.save()
  outcome_write(outcome, 'settled', call, code, actual, ARGV[4])
  grant = actual
end
local it = spend_state(keys, args, run)
local reply = {code, run.now}
item_reply(reply, FITS, it.used, it.held, it.stop, 0, grant)
if ovr then
  reply[#reply + 1] = tonumber(ovr[1])
end
return reply
