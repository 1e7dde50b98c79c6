-- lib/reply.lua: the shape of one item in a reply.
-- Included by operation scripts; defines locals only.

local DENIED = 0

-- Six integers per item: status, used, held, stop, retry_at, grant.
local function item_reply(reply, it, used, stop, retry)
  for _, value in ipairs({it.status, used, it.held, stop, retry, it.grant}) do
    reply[#reply + 1] = value
  end
end
