-- lib/check.lua: how the items of a call are decided.
-- Included after lib/items.lua by the scripts that decide their items
-- (acquire, charge, peek, observe, refund, undo); defines locals only.
-- include: lib/item_reply.lua
-- include: lib/guard.lua

-- Check every item; nil if the clock is outside a planned window.
local function check_items(items, run)
  local checked, all = {}, true
  for i, item in ipairs(items) do
    local it = KINDS[item.kind].check(item.keys, item.args, run)
    if not it then
      return nil
    end
    if math.floor(item.args[3] / GUARD) % 2 == 1 then  -- flagged GUARD
      guard_apply(item, it, run)
    end
    it.status, it.grant = decide(tonumber(item.args[2]), it.room, tonumber(item.args[3]))
    all = all and it.status ~= DENIED
    checked[i] = it
  end
  return checked, all
end

-- The reply of a check that charges nothing, for the items checked.
local function checked_reply(reply, checked, items)
  for i, it in ipairs(checked) do
    local retry = 0
    if it.status == DENIED then
      retry = it.retry(tonumber(items[i].args[2]))
    end
    item_reply(reply, it.status, it.used, it.held, it.stop, retry, it.grant)
  end
  return reply
end
