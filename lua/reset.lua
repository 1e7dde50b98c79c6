-- reset.lua: forget a (limit, subject)'s state, starting it afresh.
--
-- KEYS[1..n]  state keys of the (limit, subject), and the record of holds
--             charged into them (lib/rate_hold.lua): a hold that outlived the
--             reset would give back charges made after it
-- ARGV     none
-- Reply    number of keys that existed
-- Clock    none
-- Cost     O(n) in the number of keys (O(1) for the fixed window)
--
-- Request-id records are kept: a request charged before the reset and
-- re-sent after it must still not be charged again.

return redis.call('DEL', unpack(KEYS))
