-- sweep: expire agents whose deadline is older than the fair cutoff (docs/PROTOCOL.md).
-- KEYS[1..3] and ARGV[1..6]: see common.lua.  KEYS[4] R:control  KEYS[5] R:clock
-- ARGV[7] consumer group  ARGV[8] stall threshold ms  ARGV[9] grace ms  ARGV[10] max expiries
-- Returns {expired count, cutoff ms, now ms, watermark ms or -1, 1 if a stall began now else 0}.
-- @include common
local control, clock, group = KEYS[4], KEYS[5], ARGV[7]
local stall, grace, limit = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
local now = now_ms()

-- watermark: time of the oldest control entry not processed yet
local wm = -1
if redis.call('EXISTS', control) == 1 then
  local last = nil
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', control)) do
    local t = to_table(g)
    if t.name == group then last = t['last-delivered-id'] end
  end
  local first
  if last then
    first = redis.call('XRANGE', control, '(' .. last, '+', 'COUNT', 1)
    local p = redis.call('XPENDING', control, group)
    if p[1] > 0 then wm = entry_ms(p[2]) end
  else
    first = redis.call('XRANGE', control, '-', '+', 'COUNT', 1)
  end
  if first[1] then
    local fm = entry_ms(first[1][1])
    if wm < 0 or fm < wm then wm = fm end
  end
end

-- stall: nobody swept for longer than the threshold -> cutoff stays at the stall's start
local c = redis.call('HMGET', clock, 'last_tick', 'grace_start', 'grace_until')
local last_tick, gstart, guntil = tonumber(c[1]), tonumber(c[2]), tonumber(c[3])
local began = 0
if last_tick and now - last_tick > stall then
  if not (guntil and now < guntil and gstart and gstart < last_tick) then gstart = last_tick end
  guntil = now + grace
  began = 1
  redis.call('HSET', clock, 'grace_start', gstart, 'grace_until', guntil)
end
if not last_tick or now > last_tick then redis.call('HSET', clock, 'last_tick', now) end

local cutoff = now
if wm >= 0 and wm < cutoff then cutoff = wm end
if guntil and gstart and now < guntil and gstart < cutoff then cutoff = gstart end

local n = 0
local names = redis.call('ZRANGEBYSCORE', P.deadlines, '-inf', '(' .. cutoff, 'LIMIT', 0, limit)
for _, name in ipairs(names) do
  local h = to_table(redis.call('HGETALL', P.record .. name))
  if h.instance_id then
    expire(name, h, 'heartbeat_missed', now)
    n = n + 1
  else
    redis.call('ZREM', P.deadlines, name)
  end
end
return { n, cutoff, now, wm, began }
