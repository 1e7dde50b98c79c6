-- release.lua: drop a reservation's hold and charge nothing.
--
-- KEYS[1]  the cap's spend in the current window; KEYS[2] its holds;
--          KEYS[3] the holds' amounts (lib/spend.lua)
-- KEYS[4]  the reservation's outcome record
-- KEYS[5]  the cap's override for the subject (lib/override.lua)
-- ARGV[1]  client time in microseconds, or '' to read the server's TIME
-- ARGV[2]  the reservation id
-- ARGV[3]  how long to remember the outcome, milliseconds
-- ARGV[4]  the cap's limit, in units
-- ARGV[5]  the current window's start, ARGV[6] its end, microseconds
-- ARGV[7]  an id for this call, so a transport re-send replays its reply
-- Reply    {code, now, status, used, held, stop, retry_at, grant}, and
--          the override's limit last while one is in force; code 1
--          released, 2 already settled (nothing changed), 3 already
--          released, 4 the hold had expired, -1 now outside the planned
--          window (nothing done; re-plan)
-- Clock    server TIME, or ARGV[1] when the caller chose client time
-- Cost     O(log n + expired holds)
-- include: lib/clock.lua
-- include: lib/reply.lua
-- include: lib/item_reply.lua
-- include: lib/spend.lua
-- include: lib/outcome.lua
-- include: lib/override.lua

local run = {now = clock_now(ARGV[1]), client = ARGV[1]}
local keys = {KEYS[1], KEYS[2], KEYS[3]}
local outcome, id = KEYS[4], ARGV[2]
local args = {ARGV[4], '0', '0', ARGV[5], ARGV[6]}
-- The report is against the limit in force: an override's, while one is.
local ovr = ovr_read(KEYS[5], run.now)
if ovr then
  args[1] = ovr[1]
end
local it = spend_state(keys, args, run)
if not it then
  return {-1, run.now}
end

local call = ARGV[7]
local before, by, was = outcome_read(outcome)
local code = before == 'settled' and 2 or 3
if before == 'released' and by == call then
  code = was  -- a re-send of this very release: its reply again
elseif not before then
  code = holds_drop(keys, id, run.now) and 1 or 4
  outcome_write(outcome, 'released', call, code, 0, ARGV[3])
  it = spend_resync(keys, args, run)
end
local reply = {code, run.now}
item_reply(reply, FITS, it.used, it.held, it.stop, 0, 0)
if ovr then
  reply[#reply + 1] = tonumber(ovr[1])
end
return reply
