-- lib/outcome.lua: a reservation's outcome record.
-- Included by settle.lua and release.lua; defines locals only.
--
-- What was done (settled or released), by which call, with which reply code
-- and charge, so a second settle charges nothing and a re-send of the same
-- call replays its reply.

local function outcome_read(key)
  local stored = redis.call('GET', key)
  if not stored then
    return nil
  end
  local what, by, code, grant = string.match(stored, '^(%a+)|([^|]*)|(%d+)|(%d+)$')
  return what, by, tonumber(code), tonumber(grant)
end

-- `ttl_ms` is the text the client sent: a Lua number passed to redis.call
-- is printed again with '%.17g'.
local function outcome_write(key, what, by, code, grant, ttl_ms)
  local text = what .. '|' .. by .. '|' .. code .. '|' .. int_text(grant)
  redis.call('SET', key, text, 'PX', ttl_ms)
end
