-- lib/decide.lua: how a cost is decided against the room left.
-- Included by the scripts that decide; defines locals only.
-- include: lib/reply.lua

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
  if flags % 4 >= SHADOW then
    return SHADOWED, cost
  end
  return DENIED, 0
end
