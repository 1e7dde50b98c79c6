-- lib/reply.lua: the shape of one item in a reply.
-- Included by operation scripts; defines locals only.

local DENIED = 0

-- Six integers per item: status, used, held, stop, retry_at, grant.
local function item_reply(reply, it, used, stop, retry)
  local n = #reply
  reply[n + 1], reply[n + 2], reply[n + 3] = it.status, used, it.held
  reply[n + 4], reply[n + 5], reply[n + 6] = stop, retry, it.grant
end
