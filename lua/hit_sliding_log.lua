-- hit_sliding_log.lua: charge a sliding-log limit if the cost fits.
--
-- KEYS[1]  the limit's state for the subject
-- ARGV[1]  client time in microseconds, or '' to read the server's TIME
-- ARGV[2]  cost, in units
-- ARGV[3]  limit, in units
-- ARGV[4]  flags: 1 partial, 2 shadow
-- ARGV[5]  window length, microseconds
-- ARGV[6]  an id for this call, naming its entries
-- Reply    {status, now, used, 0, stop, retry_at, grant}: status 1 charged
--          (grant may be partial), 0 denied (nothing charged), 3 over the
--          limit but charged in shadow mode
-- Clock    server TIME, or ARGV[1] when the caller chose client time
-- Cost     O(log n + cost), n the entries in the window
-- include: lib/clock.lua
-- include: lib/reply.lua
-- include: lib/sliding_log.lua
-- include: lib/single.lua

return single(sl_kind(), ARGV[6], true)
