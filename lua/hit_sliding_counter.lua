-- hit_sliding_counter.lua: charge a sliding-counter limit if the cost fits.
--
-- KEYS[1]  the limit's state for the subject
-- ARGV[1]  client time in microseconds, or '' to read the server's TIME
-- ARGV[2]  cost, in units
-- ARGV[3]  limit, in units
-- ARGV[4]  flags: 1 partial, 2 shadow
-- ARGV[5]  window length, microseconds
-- Reply    {used, stop} when all of the cost fitted; otherwise {status,
--          now, used, 0, stop, retry_at, grant}: status 1 a partial grant,
--          0 denied (nothing charged), 3 over the limit but charged in
--          shadow mode
-- Clock    server TIME, or ARGV[1] when the caller chose client time
-- Cost     O(1)
-- include: lib/clock.lua
-- include: lib/reply.lua
-- include: lib/sliding_counter.lua
-- include: lib/single.lua

return single(sw_kind(), '', true)
