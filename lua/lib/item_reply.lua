-- lib/item_reply.lua: the shape of one item in a reply of several items.
-- Included by the scripts that answer for items (lib/items.lua, settle,
-- release); defines locals only.

-- Six integers per item: status, used, held, stop, retry_at, grant.
local function item_reply(reply, status, used, held, stop, retry, grant)
  local n = #reply
  reply[n + 1], reply[n + 2], reply[n + 3] = status, used, held
  reply[n + 4], reply[n + 5], reply[n + 6] = stop, retry, grant
end
