-- lib/replay.lua: request ids, so a re-sent request is never charged twice.
-- Included by operation scripts; defines locals only.
--
-- A charge writes a record under the request id's own key, with a bounded
-- TTL, in the same step as the charge. It holds the fingerprint of what was
-- charged (kinds and costs) and the reply, so a re-send gets the original
-- reply back. Denied requests write nothing: they charged nothing, so
-- evaluating them again is safe.

-- The record is MessagePack: the fingerprint, the reply's items, then each
-- item's limit when it was charged, so that a replay after the limit
-- changed still reports the first decision's limit and remaining. Redis
-- packs a Lua number that holds an integer as an integer, so every value
-- comes back exactly, and packing in C costs a fraction of formatting text.
-- A server whose Lua has no cmsgpack (fakeredis, in users' test suites)
-- gets the same values as text: "fingerprint|n,n,n". A record is only ever
-- read by the server that wrote it, so the two never meet.

local function replay_decode(stored)
  if cmsgpack then
    return {cmsgpack.unpack(stored)}
  end
  local fingerprint, numbers = string.match(stored, '^([^|]*)|(.*)$')
  local values = {fingerprint}
  for number in string.gmatch(numbers, '[^,]+') do
    values[#values + 1] = tonumber(number)
  end
  return values
end

-- The recorded reply as a replay, {-2, now} for a fingerprint that does not
-- match, or nil when the id is new. A replay is {2, now, the items, the
-- items' limits}; a record written before limits were kept has none.
--
-- A replay rewrites the record's expiry, unchanged: a write replicated after
-- the first charge's, so a WAIT sent after the replay waits for replicas to
-- have the charge, whichever connection made it.
local function replay_lookup(record, fingerprint, now)
  local stored = redis.call('GET', record)
  if not stored then
    return nil
  end
  local values = replay_decode(stored)
  if values[1] ~= fingerprint then
    return {-2, now}
  end
  local left = redis.call('PTTL', record)
  if left > 0 then
    redis.call('PEXPIRE', record, left)
  end
  local reply = {2, now}
  for i = 2, #values do
    reply[i + 1] = values[i]
  end
  return reply
end

-- The {grant, stop} of each of a recorded reply's `count` items.
local function replay_items(record, count)
  local stored = redis.call('GET', record)
  if not stored then
    return nil
  end
  local values = replay_decode(stored)
  local items = {}
  for n = 0, count - 1 do
    local i = 2 + 6 * n
    items[n + 1] = {grant = values[i + 5], stop = values[i + 3]}
  end
  return items
end

-- Record the reply of a call, and each of its items' limit (item.args[1]).
local function replay_remember(record, ttl_ms, fingerprint, reply, items)
  local values = {fingerprint}
  for i = 3, #reply do
    values[i - 1] = reply[i]
  end
  for _, item in ipairs(items) do
    values[#values + 1] = tonumber(item.args[1])
  end
  local stored
  if cmsgpack then
    stored = cmsgpack.pack(unpack(values))
  else
    for i = 2, #values do
      values[i] = int_text(values[i])
    end
    stored = fingerprint .. '|' .. table.concat(values, ',', 2)
  end
  redis.call('SET', record, stored, 'PX', ttl_ms)
end
