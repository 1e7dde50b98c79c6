-- lib/replay.lua: request ids, so a re-sent request is never charged twice.
-- Included by operation scripts; defines locals only.
--
-- A charge writes a record under the request id's own key, with a bounded
-- TTL, in the same step as the charge. It holds the fingerprint of what was
-- charged (kinds and costs) and the reply, so a re-send gets the original
-- reply back. Denied requests write nothing: they charged nothing, so
-- evaluating them again is safe.

-- The recorded reply as a replay, {-2, now} for a fingerprint that does not
-- match, or nil when the id is new.
local function replay_lookup(record, fingerprint, now)
  local stored = redis.call('GET', record)
  if not stored then
    return nil
  end
  local seen, body = string.match(stored, '^([^|]*)|(.*)$')
  if seen ~= fingerprint then
    return {-2, now}
  end
  local reply = {2, now}
  for value in string.gmatch(body, '[^,]+') do
    reply[#reply + 1] = tonumber(value)
  end
  return reply
end

-- The items of a recorded reply: {status, used, held, stop, retry, grant}.
local function replay_items(record)
  local stored = redis.call('GET', record)
  if not stored then
    return nil
  end
  local values = {}
  for value in string.gmatch(string.match(stored, '|(.*)$'), '[^,]+') do
    values[#values + 1] = tonumber(value)
  end
  local items = {}
  for i = 1, #values, 6 do
    items[#items + 1] = {grant = values[i + 5], stop = values[i + 3]}
  end
  return items
end

local function replay_remember(record, ttl_ms, fingerprint, reply)
  local body = {}
  for i = 3, #reply do
    body[#body + 1] = int_text(reply[i])
  end
  redis.call('SET', record, fingerprint .. '|' .. table.concat(body, ','), 'PX', ttl_ms)
end
