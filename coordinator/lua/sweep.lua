-- sweep: expire agents whose deadline is older than the fair cutoff (docs/PROTOCOL.md).
-- KEYS[1..6] and ARGV[1..11]: see common.lua.  ARGV[12] max expiries
-- Also drops tombstones older than they are kept (ARGV[10]).
-- Returns {expired count, cutoff ms, now ms, watermark ms or -1, 1 if a stall began now else 0}.
-- @include common
local limit = tonumber(ARGV[12])
local now = now_ms()
local cutoff, wm, began = fair_cutoff(now)

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
redis.call('ZREMRANGEBYSCORE', P.tombstones, '-inf', '(' .. (now - P.keep))
return { n, cutoff, now, wm, began }
