-- lib/decimal.lua: plain decimal strings <-> integer units, without floats.
-- Included by operation scripts; defines locals only.
--
-- The seed application stores spend as the decimal text INCRBYFLOAT writes,
-- such as "12.300000000000001". Reading it through tonumber would carry the
-- float error into every later comparison, so the text is split into digits
-- and read as integer units of 10^-places, rounding half up at the last
-- place: float noise sits many digits below a micro-unit and rounds away.

-- Returns units, or nil when the text is not a plain decimal number.
local function decimal_to_units(text, places)
  if not text then
    return 0
  end
  local sign, whole, frac = string.match(text, '^([-+]?)(%d*)%.?(%d*)$')
  if not sign or (whole == '' and frac == '') then
    return nil
  end
  local kept = string.sub(frac .. string.rep('0', places), 1, places)
  local units = tonumber(whole == '' and '0' or whole) * 10 ^ places + (tonumber(kept) or 0)
  if string.sub(frac, places + 1, places + 1) >= '5' then
    units = units + 1
  end
  if sign == '-' then
    units = -units
  end
  return units
end

-- Integer units of 10^-places as plain decimal text, trailing zeros dropped.
local function units_to_decimal(units, places)
  local sign = ''
  if units < 0 then
    sign, units = '-', -units
  end
  local scale = 10 ^ places
  -- fmod is exact on doubles, so whole and frac stay exact integers.
  local frac = math.fmod(units, scale)
  local text = string.format('%s%.0f', sign, (units - frac) / scale)
  if frac > 0 then
    local digits = string.gsub(string.format('%0' .. places .. '.0f', frac), '0+$', '')
    text = text .. '.' .. digits
  end
  return text
end
