-- cache_unlock.lua: release a single-flight lock, only if this holder still has it.
--
-- KEYS[1]  the lock key, <entry key>::lock
-- ARGV[1]  the token the holder wrote when it took the lock (SET NX PX)
-- Reply    1 released, 0 not released: the lock expired, and may since
--          belong to another holder
-- Clock    none
-- Cost     O(1)
--
-- Compare and delete must be one step. A GET then DEL from the client could
-- delete a lock that expired and was taken by a second holder in between,
-- letting a third worker run the factory alongside the second.

if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
