-- server_probe.lua: can this user run a script that reads the server clock?
-- Sent by the server check (atomlimit/_server.py, `atomlimit doctor`); no
-- decision uses it.
--
-- KEYS   none
-- ARGV   none
-- Reply  {seconds, microseconds}, exactly as TIME returns them
-- Clock  server TIME
-- Cost   O(1); reads and writes no key

return redis.call('TIME')
