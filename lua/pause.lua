-- pause.lua: pause an upstream's limits, or clear what their guards know.
--
-- KEYS     each limit's guard hash (lib/guard.lua), one upstream's
-- ARGV[1]  client time in microseconds, or '' to read the server's TIME
-- ARGV[2]  'pause', 'clear' (the pause) or 'forget' (the pause and what
--          the provider's figures taught)
-- ARGV[3]  for 'pause': how long, microseconds
-- Reply    {now, then per key: the instant it is paused until, 0 if not}
-- Clock    server TIME, or ARGV[1] when the caller chose client time
-- Cost     O(keys)
--
-- A pause is only ever extended: a later, shorter pause leaves the end as
-- it was, so the longest Retry-After any worker heard stands.
-- include: lib/clock.lua

local GUARD_KEPT_MS = 86400000
local now, action = clock_now(ARGV[1]), ARGV[2]
local reply = {now}
for i, key in ipairs(KEYS) do
  local paused = tonumber(redis.call('HGET', key, 'p')) or 0
  if action == 'pause' then
    local wanted = now + tonumber(ARGV[3])
    if wanted > paused then
      paused = wanted
      redis.call('HSET', key, 'p', int_text(paused))
      redis.call('PEXPIRE', key, math.max(GUARD_KEPT_MS, math.ceil((paused - now) / 1000)))
    end
  elseif action == 'clear' then
    redis.call('HDEL', key, 'p')
    paused = 0
  else
    redis.call('DEL', key)
    paused = 0
  end
  reply[i + 1] = paused > now and paused or 0
end
return reply
