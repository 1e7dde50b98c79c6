-- lib/fixed_window.lua: kind "fw", a counter per calendar or fixed window.
-- Included after lib/clock.lua and lib/reply.lua; defines locals only.
--
-- One integer string per (limit, subject, window): the units used in it.
-- The window's start is part of the key, planned by the client from its
-- calendar; before a script creates a window's counter it checks that the
-- clock (server TIME, or the client time sent) is inside that window, so the
-- clock that decides is still the server's. On the server's clock the key
-- expires when its window ends (expire_with_window), so a counter that
-- exists belongs to the open window: the common hit is a GET and an INCRBY,
-- with no TIME. An integer string is the cheapest state Redis keeps.
--
-- Item arguments: limit, cost, flags, start, stop (the planned window).
--
-- While an override (lib/override.lua) is in force, the counter holds its
-- units followed by OVR_MARK: a reader that finds a bare integer knows no
-- override is in force without reading the override's hash, and one that
-- finds the mark (or no counter: a window opening) reads it. Setting or
-- deleting an override rewrites the open windows' counters (override.lua).
-- A mark whose override has lapsed only sends readers to the hash, which
-- answers "none"; the next write drops it.

local OVR_MARK = '|o'

-- The units in a counter as stored (false: none), whether it carries the
-- mark, and whether it exists.
local function fw_parse(stored)
  if not stored then
    return 0, false, false
  end
  local used = tonumber(stored)
  if used then
    return used, false, true
  end
  return tonumber(string.match(stored, '^(%d+)')), true, true
end

-- Sets the counter to `used`, marked or not; a new counter ends with its window.
local function fw_put(key, used, marked, existed, now, stop, client_now)
  redis.call('SET', key, int_text(used) .. (marked and OVR_MARK or ''), 'KEEPTTL')
  if not existed then
    expire_with_window(key, now, stop, client_now)
  end
  return used
end

-- Lowers the counter by up to `amount`, never below zero; a counter that is
-- gone (its window closed) owes nothing back.
local function fw_lower(key, amount)
  local used, marked, existed = fw_parse(redis.call('GET', key))
  if existed and amount > 0 then
    if marked then
      redis.call('SET', key, int_text(used - math.min(used, amount)) .. OVR_MARK, 'KEEPTTL')
    else
      redis.call('DECRBY', key, math.min(used, amount))
    end
  end
end

-- Made on first use in a run: most runs use one kind.
local function fw_kind()
  local function fw_check(keys, args, run)
    -- parse_items made every argument a number; only an override's limit
    -- (args[1]) is text.
    local key, limit, start, stop = keys[1], tonumber(args[1]), args[4], args[5]
    if run.now < start or run.now >= stop then
      return nil
    end
    local stored = args.stored
    if stored ~= nil then
      -- lib/items.lua read the counter just now; it is taken once, so a
      -- second check in the same run (after a change) reads again.
      args.stored = nil
    else
      stored = redis.call('GET', key)
    end
    local used, was = fw_parse(stored)
    -- The items' scripts read the override's hash (lib/items.lua) and mark
    -- the counter while one is in force, so the kind's own hit sees it.
    local marked = args.overridden == true
    -- Adds `grant`; returns used and stop after it. The read above says
    -- whether the counter carries a mark, which only this function changes
    -- in a run: an unmarked counter that stays so is added to without
    -- reading it again. The grant goes as text: a Lua number passed to
    -- redis.call is printed with '%.17g', which costs more than int_text.
    local function add(grant)
      if was or marked then
        -- A counter that carries the mark, or is to: read again and, unless
        -- neither it nor the item is marked now, written whole.
        local used, now_marked, existed = fw_parse(redis.call('GET', key))
        was = marked
        if now_marked or marked then
          return fw_put(key, used + grant, marked, existed, run.now, stop, run.client), stop
        end
      end
      local used = redis.call('INCRBY', key, int_text(grant))
      if used == grant then
        -- A new counter ends with its window. Also taken when an existing
        -- counter was refunded to zero; setting the same expiry again is
        -- harmless.
        expire_with_window(key, run.now, stop, run.client)
      end
      return used, stop
    end
    -- Every field in one constructor: a table that outgrows the size its
    -- constructor gave it is rebuilt. `add` is the charge a guard opening
    -- the window makes (lib/guard.lua), which a hold's apply does not wrap.
    -- `stored` is the counter as read, which fw_settle takes instead of
    -- reading it again when nothing has written it since.
    return {
      room = limit - used, used = used, held = 0, stop = stop, add = add, apply = add,
      stored = stored, status = false, grant = false,
      retry = function(cost)
        -- The whole limit is free again when this window ends.
        return cost <= limit and stop or 0
      end,
    }
  end

  local function fw_undo(keys, args, run, grant, stop)
    -- A counter read before this change (lib/items.lua) is stale after it.
    args.stored = nil
    -- Only the window that was charged owes anything back.
    if stop == args[5] then
      fw_lower(keys[1], grant)
    end
  end

  local function fw_refund(keys, args, run, amount)
    args.stored = nil
    fw_lower(keys[1], amount)
  end

  -- A hold's end (lib/rate_hold.lua): gives back `units` charged in the
  -- window that ends at `charged_stop` if it is still this one, then
  -- charges `actual` (nil or 0: nothing), as fw_undo then apply would, in
  -- one read and one write. The counter ends as those two would leave it,
  -- its mark and expiry included. `checked` (or nil) is this run's check of
  -- the item, when nothing has written the counter since: its read stands
  -- for the read here. Returns the state after it.
  local function fw_settle(keys, args, run, units, charged_stop, actual, checked)
    local key, stop = keys[1], args[5]
    args.stored = nil
    local used, was, existed
    if checked then
      used, was, existed = fw_parse(checked.stored)
    else
      used, was, existed = fw_parse(redis.call('GET', key))
    end
    local back = 0
    if existed and units and units > 0 and charged_stop == stop then
      back = math.min(used, units)
    end
    used = used - back
    local marked = args.overridden == true
    if actual and actual > 0 then
      if not was and not marked then
        -- The give-back, then the charge: a counter the give-back left at
        -- zero gets its window's expiry again, as add sets it.
        used = redis.call('INCRBY', key, int_text(actual - back))
        if used == actual then
          expire_with_window(key, run.now, stop, run.client)
        end
      else
        used = fw_put(key, used + actual, marked, existed, run.now, stop, run.client)
      end
    elseif back > 0 then
      -- Only a give-back: the counter keeps its mark as it is.
      if was then
        redis.call('SET', key, int_text(used) .. OVR_MARK, 'KEEPTTL')
      else
        redis.call('DECRBY', key, int_text(back))
      end
    end
    return {used = used, held = 0, stop = stop}
  end

  return {check = fw_check, undo = fw_undo, refund = fw_refund, settle = fw_settle}
end
