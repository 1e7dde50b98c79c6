-- lib/items.lua: the items of a call, and each kind of limit's functions.
-- Included by the scripts that take several items of any kind (acquire,
-- holds, refunds, undo); a single hit runs its kind's own script instead.
-- Deciding the items (lib/check.lua) is included only by the scripts that
-- decide: its functions are closures made on every run of a script that
-- includes them, and settling or releasing a hold decides nothing.
-- Defines locals only.
-- include: lib/clock.lua
-- include: lib/reply.lua
-- include: lib/override.lua
--
-- A call carries one or more items, each a limit of one subject. ARGV holds,
-- per item: its kind, its number of keys, its number of arguments, then the
-- arguments (limit, cost, flags, then kind-specific ones); KEYS holds each
-- item's keys in the same order, the first its override's hash
-- (lib/override.lua), which is read here (for a fixed window, only when its
-- counter says to), so each kind sees the limit in force as its first
-- argument. All keys of a call share one hash slot.
--
-- Each kind's check(keys, args, run) reads the item's state at run.now and
-- returns a table: room (how many units fit now), used, held, stop (when
-- usage is back to zero), apply(grant) -> used, stop after charging, and
-- retry(cost) -> the instant the cost could fit, or 0 for never. check
-- returns nil when run.now is outside the planned window. A run is {now,
-- client (the client time sent, or ''), id (the request id, naming leases,
-- holds and log entries)}.

-- Each kind's functions, made when a run first asks for that kind (KINDS).
-- A kind's library is included lazily, inside its branch of build_kind, so
-- that a call makes the functions of the kinds it names and no others. One
-- function with a branch per kind, the table's __index, not a table of
-- builders: each builder would be a closure made on every run.
local function build_kind(made, kind)
  local functions
  if kind == 'fw' then
    -- lazy: lib/fixed_window.lua
    functions = fw_kind()
  elseif kind == 'hfw' then
    -- lazy: lib/rate_hold.lua
    functions = rh_kind(made.fw)
  elseif kind == 'sc' then
    -- lazy: lib/spend.lua
    functions = sc_kind()
  elseif kind == 'rs' then
    -- lazy: lib/spend.lua
    functions = rs_kind()
  elseif kind == 'gc' then
    -- lazy: lib/gcra.lua
    functions = gc_kind()
  elseif kind == 'sl' then
    -- lazy: lib/sliding_log.lua
    functions = sl_kind()
  elseif kind == 'sw' then
    -- lazy: lib/sliding_counter.lua
    functions = sw_kind()
  elseif kind == 'cc' then
    -- lazy: lib/concurrency.lua
    functions = cc_kind()
  elseif kind == 'hgc' then
    -- lazy: lib/rate_hold.lua
    functions = rh_kind(made.gc)
  elseif kind == 'hsw' then
    -- lazy: lib/rate_hold.lua
    functions = rh_kind(made.sw)
  end
  made[kind] = functions
  return functions
end
local KINDS = setmetatable({}, {__index = build_kind})

-- The counters parse_items has read in this run: a second item on the same
-- counter reads it at its own check, after the first item's writes.
local counters_read = {}

-- Items parsed from KEYS[first_key..] and ARGV[first_arg..], with any
-- override in force at `now` applied, and the first key and argument after
-- them. An item with an override applied has `overridden` set, as do its
-- arguments (which the fixed window's check reads).
--
-- A fixed window's counter is read here, and its override's hash only when
-- the counter is missing or marked, as its own hit does: a bare integer
-- says no override is in force. The counter read is left in args.stored
-- for the kind's check, which takes it instead of reading again; the only
-- writes to a counter between here and its first item's check are its own
-- kind's undo and refund, which drop it.
local function parse_items(first_key, first_arg, now)
  local items, k, a = {}, first_key, first_arg + 1
  for _ = 1, ARGV[first_arg] + 0 do
    local kind, nkeys, nargs = ARGV[a], ARGV[a + 1] + 0, ARGV[a + 2] + 0
    -- Each table is made at its size in one step: one filled an entry at a
    -- time is reallocated as it grows to 1, 2, 4 and 8 entries.
    local keys = {unpack(KEYS, k + 1, k + nkeys - 1)}
    local args = {unpack(ARGV, a + 3, a + 2 + nargs)}
    -- Numbers once, here: every kind reads its arguments with tonumber(),
    -- which then costs nothing, where each read of a string parses it again.
    -- Arithmetic parses a numeric string once; tonumber() parses it twice.
    -- Kinds whose arguments are all numbers (the client sends integers),
    -- and whose state is one counter (keys[1]) carrying the override's
    -- mark (lib/fixed_window.lua). Two comparisons of interned strings, not
    -- a table made on every run.
    local counted = kind == 'fw' or kind == 'hfw'
    if counted then
      for i = 1, nargs do
        args[i] = args[i] + 0
      end
    else
      for i = 1, nargs do
        args[i] = tonumber(args[i]) or args[i]
      end
    end
    local item = {kind = kind, keys = keys, args = args}
    local o
    if counted and not counters_read[keys[1]] then
      counters_read[keys[1]] = true
      local stored = redis.call('GET', keys[1])
      args.stored = stored
      if not stored or not tonumber(stored) then
        o = ovr_read(KEYS[k], now)
      end
    else
      o = ovr_read(KEYS[k], now)
    end
    if o then
      -- The override in force goes into the arguments: the limit first;
      -- for gcra the burst, then the interval fourth.
      if kind == 'gc' or kind == 'hgc' then
        args[1], args[4] = o[2], o[3]
      else
        args[1] = o[1]
      end
      item.overridden, args.overridden = true, true
    end
    items[#items + 1] = item
    k, a = k + nkeys, a + 3 + nargs
  end
  return items, k, a
end

-- Each item's limit in force when any item's override applied, after the
-- items' six integers: -1 for an item under its spec's own limit.
local function limits_reply(reply, items)
  local any = false
  for _, item in ipairs(items) do
    any = any or item.overridden
  end
  if any then
    for _, item in ipairs(items) do
      reply[#reply + 1] = item.overridden and tonumber(item.args[1]) or -1
    end
  end
  return reply
end
