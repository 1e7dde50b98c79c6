-- lib/check.lua: how the items of a call are decided.
-- Included after lib/items.lua by the scripts that decide their items
-- (acquire, charge, peek, observe, refund, undo); defines locals only.
-- include: lib/decide.lua
-- include: lib/item_reply.lua
-- include: lib/guard.lua

-- Check every item; nil if the clock is outside a planned window.
local function check_items(items, run)
  local checked, all = {}, true
  for i, item in ipairs(items) do
    -- Cost and flags are numbers already: parse_items made them so.
    local args = item.args
    local it = KINDS[item.kind].check(item.keys, args, run)
    if not it then
      return nil
    end
    if math.floor(args[3] / GUARD) % 2 == 1 then  -- flagged GUARD
      guard_apply(item, it, run)
    end
    it.status, it.grant = decide(args[2], it.room, args[3])
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
