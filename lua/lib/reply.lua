-- lib/reply.lua: an item's statuses in a reply, and its flags.
-- Included by operation scripts; defines locals only. How a cost is decided
-- against the room left is lib/decide.lua's, apart so that the scripts that
-- decide nothing (settling or releasing a hold) do not make its closure.

local DENIED, FITS, SHADOWED = 0, 1, 3
local PARTIAL, SHADOW, GUARD, SLOW_START = 1, 2, 4, 8
