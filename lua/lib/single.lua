-- lib/single.lua: one item of one kind, decided in the per-kind hit and
-- peek scripts of the kinds whose state is richer than a counter.
-- Included after the kind's library; defines locals only.
--
-- KEYS: the kind's state, then the override's hash (lib/override.lua).
-- ARGV: client time or '', cost, limit, flags, then the kind's own
-- arguments. A charge of all of the cost answers {used, stop}; anything
-- else {status, now, used, held, stop, retry_at, grant}, or {-1, now} when
-- now is outside the planned window; while an override is in force, the
-- limit in force follows, last, in every shape.
-- include: lib/decide.lua

-- Puts the override in force (lib/override.lua) into an item's arguments
-- (limit first; for gcra the burst, then the interval fourth). Returns
-- whether one applied.
local function ovr_apply(kind, args, o)
  if kind == 'gc' or kind == 'hgc' then
    args[1], args[4] = o[2], o[3]
  else
    args[1] = o[1]
  end
  return true
end

-- The kind's arguments in the items' order: limit, cost, flags, extras.
local function single_args()
  local args = {ARGV[3], ARGV[2], ARGV[4]}
  for i = 5, #ARGV do
    args[#args + 1] = ARGV[i]
  end
  return args
end

-- Decides the item; with `charge`, charges what was granted.
local function single(kind, code, id, charge)
  local run = {now = clock_now(ARGV[1]), client = ARGV[1], id = id}
  local args = single_args()
  local o = ovr_read(KEYS[2], run.now)
  if o then
    ovr_apply(code, args, o)
  end
  local it = kind.check(KEYS, args, run)
  if not it then
    return {-1, run.now}
  end
  local cost = tonumber(ARGV[2])
  local status, grant = decide(cost, it.room, tonumber(ARGV[4]))
  local reply
  if status == DENIED then
    reply = {DENIED, run.now, it.used, it.held, it.stop, it.retry(cost), 0}
  else
    local used, stop = it.used, it.stop
    if charge then
      used, stop = it.apply(grant)
    end
    if charge and status == FITS and grant == cost then
      reply = {used, stop}
    else
      reply = {status, run.now, used, it.held, stop, 0, grant}
    end
  end
  if o then
    reply[#reply + 1] = tonumber(args[1])
  end
  return reply
end
