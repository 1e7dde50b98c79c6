-- lib/once.lua: a compat write, applied once however often it is sent.
-- Included by the compat scripts; defines locals only.
--
-- The seed's keys hold bare values with no room for request ids, so each
-- applied write leaves a small record beside them, in the same slot, for a
-- bounded TTL. redis-py re-sends a command whose reply was lost; the re-send
-- finds the record and returns the first reply instead of counting again.

-- The recorded {2, now, value} of an earlier send, or nil.
local function once_lookup(record, now)
  local stored = redis.call('GET', record)
  if not stored then
    return nil
  end
  return {2, now, string.match(stored, '^[^|]*|(.*)$')}
end

local function once_remember(record, ttl_ms, code, value)
  redis.call('SET', record, code .. '|' .. value, 'PX', ttl_ms)
end
