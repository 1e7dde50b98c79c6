-- compat_spend.lua: the seed's daily spend total, checked and added exactly.
--
-- KEYS[1]  the seed's spend key, ai_spend:{client_id}:daily (decimal text)
-- KEYS[2]  this call's record, in the spend key's slot
-- ARGV[1]  amount, in units of 10^-ARGV[3]
-- ARGV[2]  cap in the same units, or '' to add unconditionally
-- ARGV[3]  decimal places of one unit (6: micro-units)
-- ARGV[4]  client time in microseconds, or '' to read the server's TIME
-- ARGV[5..8]  planned day boundaries b1 < b2 < b3 < b4, microseconds
-- ARGV[9]  how long to keep the record, milliseconds
-- Reply    {status, now, total}; status 1 added, 0 refused (total + amount
--          would pass the cap; nothing written), 2 a re-send of an applied
--          call (its total, nothing added again), -1 now outside the
--          planned windows; total is decimal text
-- Clock    server TIME, or ARGV[4] when the caller chose client time
-- Cost     O(1)
--
-- The total is written back as plain decimal text, which INCRBYFLOAT on
-- workers still running the seed's code can keep adding to.
-- include: lib/clock.lua
-- include: lib/planned.lua
-- include: lib/decimal.lua
-- include: lib/once.lua

local key, record = KEYS[1], KEYS[2]
local amount, places = tonumber(ARGV[1]), tonumber(ARGV[3])
local now = clock_now(ARGV[4])
local replayed = once_lookup(record, now)
if replayed then
  return replayed
end
local start, stop = pick_window(now, tonumber(ARGV[5]), tonumber(ARGV[6]),
  tonumber(ARGV[7]), tonumber(ARGV[8]))
if not start then
  return {-1, now, ''}
end
local stored = redis.call('GET', key)
local total = decimal_to_units(stored, places)
if not total then
  return redis.error_reply('atomlimit: ' .. key .. ' does not hold a plain decimal')
end
if ARGV[2] ~= '' and total + amount > tonumber(ARGV[2]) then
  return {0, now, units_to_decimal(total, places)}
end
local text = units_to_decimal(total + amount, places)
redis.call('SET', key, text, 'PX', ms_until(stop, now))
once_remember(record, tonumber(ARGV[9]), 1, text)
return {1, now, text}
