-- acquire.lua: check the items of several subjects, then charge all or none.
--
-- KEYS     per group (one subject's items), in group order: the group's
--          record, when ARGV[2] is not ''; then each item's keys
-- ARGV[1]  client time in microseconds, or '' to read the server's TIME
-- ARGV[2]  how long to remember each group's record, milliseconds; '' keeps
--          none
-- ARGV[3]  the request id (also names leases and holds)
-- ARGV[4]  number of groups, then per group: its fingerprint, its number
--          of items, then per item: kind, #keys, #args, args...
-- Reply    {code, now, then per item of every group: status, used, held,
--          stop, retry_at, grant}; code 1 all charged, 0 nothing charged
--          (some item denied), -1 now outside the planned windows (nothing
--          done; re-plan), -4 a group's record exists already (nothing done:
--          the client charges group by group, which replays it)
-- Clock    server TIME, or ARGV[1] when the caller chose client time
-- Cost     the sum of each group's charge.lua
--
-- The one-round-trip form of an acquire over several subjects, for a server
-- that holds every key (not a cluster). Each group's record is the one
-- charge.lua would write for that group alone, so undo.lua and a replay
-- group by group read it as theirs.
-- include: lib/items.lua
-- include: lib/check.lua
-- include: lib/replay.lua

local run = {now = clock_now(ARGV[1]), client = ARGV[1], id = ARGV[3]}
local kept = ARGV[2] ~= '' and tonumber(ARGV[2]) or nil
local groups, all_items, k, a = {}, {}, 1, 5
for _ = 1, tonumber(ARGV[4]) do
  local group = {fingerprint = ARGV[a]}
  if kept then
    group.record = KEYS[k]
    k = k + 1
    if redis.call('GET', group.record) then
      return {-4, run.now}
    end
  end
  group.items, k, a = parse_items(k, a + 1, run.now)
  for _, item in ipairs(group.items) do
    all_items[#all_items + 1] = item
  end
  groups[#groups + 1] = group
end

local checked, all = check_items(all_items, run)
if not checked then
  return {-1, run.now}
end
if not all then
  return limits_reply(checked_reply({0, run.now}, checked, all_items), all_items)
end
local reply, n = {1, run.now}, 0
for _, group in ipairs(groups) do
  local own = {1, run.now}
  for _ in ipairs(group.items) do
    n = n + 1
    local it = checked[n]
    local used, stop = it.apply(it.grant)
    item_reply(own, it.status, used, it.held, stop, 0, it.grant)
  end
  for i = 3, #own do
    reply[#reply + 1] = own[i]
  end
  if kept then
    replay_remember(group.record, kept, group.fingerprint, own, group.items)
  end
end
return limits_reply(reply, all_items)
