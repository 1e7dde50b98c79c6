-- lib/planned.lua: windows the client planned, for scripts that keep no
-- window of their own (the compat layer's daily keys).
-- Included after lib/clock.lua; defines locals only.

-- The client plans three consecutive windows from its calendar (Lua has no
-- time zones): b1..b2, b2..b3, b3..b4. Returns the one holding now, or nil
-- when now is outside all three, so the client re-plans around the server's
-- time instead of the script guessing.
local function pick_window(now, b1, b2, b3, b4)
  if now < b1 or now >= b4 then
    return nil
  end
  if now < b2 then
    return b1, b2
  end
  if now < b3 then
    return b2, b3
  end
  return b3, b4
end

-- A relative TTL in whole milliseconds, rounded up, ending at `stop`.
local function ms_until(stop, now)
  return math.max(1, math.ceil((stop - now) / 1000))
end
