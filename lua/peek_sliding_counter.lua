-- peek_sliding_counter.lua: would a sliding-counter hit of this cost fit now?
--
-- KEYS[1]  the limit's state for the subject
-- KEYS[2]  the override's hash (lib/override.lua)
-- ARGV[1]  client time in microseconds, or '' to read the server's TIME
-- ARGV[2]  cost, in units
-- ARGV[3]  limit, in units
-- ARGV[4]  flags: 1 partial, 2 shadow
-- ARGV[5]  window length, microseconds
-- Reply    {status, now, used, 0, stop, retry_at, grant}: status 1 fits, 0
--          would be denied, 3 over but let through in shadow mode
-- Clock    server TIME, or ARGV[1] when the caller chose client time
-- Cost     O(1); writes nothing
-- include: lib/clock.lua
-- include: lib/reply.lua
-- include: lib/sliding_counter.lua
-- include: lib/override.lua
-- include: lib/single.lua

return single(sw_kind(), 'sw', '', false)
