-- lib/reply.lua: how a cost is decided against the room left, and the
-- shape of one decision in a reply.
-- Included by operation scripts; defines locals only.

local DENIED, FITS, SHADOWED = 0, 1, 3
local PARTIAL, SHADOW = 1, 2

-- Status and grant of `cost` when `room` units fit, under the item's flags:
-- all of it; as much as fits with PARTIAL; all of it anyway with SHADOW
-- (counted and reported as over); or nothing.
local function decide(cost, room, flags)
  if cost <= room then
    return FITS, cost
  end
  if flags % 2 == PARTIAL and room > 0 then
    return FITS, room
  end
  if flags >= SHADOW then
    return SHADOWED, cost
  end
  return DENIED, 0
end

-- Six integers per item: status, used, held, stop, retry_at, grant.
local function item_reply(reply, status, used, held, stop, retry, grant)
  local n = #reply
  reply[n + 1], reply[n + 2], reply[n + 3] = status, used, held
  reply[n + 4], reply[n + 5], reply[n + 6] = stop, retry, grant
end
