-- lib/replay.lua: request ids, so a re-sent request is never charged twice.
-- Included by operation scripts; defines locals only.
--
-- A charge writes a record under the request id's own key, with a bounded
-- TTL. The record holds what the caller needs to see the original decision
-- again: used after the charge, the window end, and the cost charged. Denied
-- requests write nothing: they charged nothing, so re-evaluating them is safe.

local REPLAYED = 2
local REUSED = -2

-- Returns nil when the id is new; otherwise the status and recorded values.
local function replay_lookup(rkey, cost)
  local record = redis.call('GET', rkey)
  if not record then
    return nil
  end
  local used, stop, charged = string.match(record, '^(%d+)|(%d+)|(%d+)$')
  if tonumber(charged) ~= cost then
    return REUSED, 0, 0
  end
  return REPLAYED, tonumber(used), tonumber(stop)
end

local function replay_remember(rkey, ttl_ms, used, stop, cost)
  redis.call('SET', rkey, string.format('%.0f|%.0f|%.0f', used, stop, cost), 'PX', ttl_ms)
end
