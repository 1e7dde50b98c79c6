-- override.lua: set, read or delete a per-subject override of a limit.
--
-- KEYS[1]  the override's hash (lib/override.lua)
-- KEYS[2..] the state that carries the override's mark, rewritten so the
--          kind's hit script sees the change: a fixed window's counters
--          that may be open (the planned window and its neighbours,
--          lib/fixed_window.lua), a GCRA's TAT (lib/gcra.lua); none for
--          other kinds
-- ARGV[1]  client time in microseconds, or '' to read the server's TIME
-- ARGV[2]  'set', 'get' or 'del'
-- ARGV[3]  for 'set': the limit, in units
-- ARGV[4]  for 'set': the burst, in units ('' for kinds without one)
-- ARGV[5]  for 'set': the emission interval, microseconds ('' likewise)
-- ARGV[6]  for 'set': when it expires, epoch microseconds; '' for never
-- Reply    'get': {limit, burst, interval, expires} as stored ('' for an
--          absent field), or {} when none is in force; 'set': 1; 'del': 1
--          if an override was in force, else 0
-- Clock    server TIME, or ARGV[1] when the caller chose client time
-- Cost     O(1)
-- include: lib/clock.lua
-- include: lib/override.lua

local key, action = KEYS[1], ARGV[2]
local now = clock_now(ARGV[1])
local o = ovr_read(key, now)

-- Marks or unmarks every open counter given, keeping its units and expiry.
local function remark(marked)
  for i = 2, #KEYS do
    local stored = redis.call('GET', KEYS[i])
    if stored then
      local state = string.match(stored, '^([^|]+)')
      redis.call('SET', KEYS[i], state .. (marked and '|o' or ''), 'KEEPTTL')
    end
  end
end

if action == 'get' then
  if not o then
    return {}
  end
  return {o[1], o[2] or '', o[3] or '', o[4] or ''}
end
if action == 'del' then
  redis.call('DEL', key)
  remark(false)
  return o and 1 or 0
end
redis.call('DEL', key)
local fields = {'l', ARGV[3]}
if ARGV[4] ~= '' then
  fields[#fields + 1], fields[#fields + 2] = 'b', ARGV[4]
  fields[#fields + 1], fields[#fields + 2] = 'i', ARGV[5]
end
if ARGV[6] ~= '' then
  fields[#fields + 1], fields[#fields + 2] = 'e', ARGV[6]
end
redis.call('HSET', key, unpack(fields))
if ARGV[6] ~= '' then
  redis.call('PEXPIRE', key, ms_kept(tonumber(ARGV[6]), now))
end
remark(true)
return 1
