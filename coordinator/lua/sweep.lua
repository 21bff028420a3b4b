-- sweep: expire agents whose deadline is older than the fair cutoff (docs/PROTOCOL.md).
-- KEYS[1..7] and ARGV[1..11]: see common.lua.  ARGV[12] max expiries
-- A lapsed lease (R:leases) expires every name it holds (a lease of more names than the limit
-- over several calls: the lease stays due until its set is empty). Then the names with a
-- deadline of their own (R:deadlines): a name found there that is registered under a live lease
-- (written before protocol 2.2) leaves R:deadlines, the lease keeps it.
-- Also drops tombstones older than they are kept (ARGV[10]).
-- Returns {expired count, cutoff ms, now ms, watermark ms or -1, 1 if a stall began now else 0}.
-- @include common
local limit = tonumber(ARGV[12])
local now = now_ms()
local cutoff, wm, began = fair_cutoff(now)

local n = 0
local leases = redis.call('ZRANGEBYSCORE', P.leases, '-inf', '(' .. cutoff, 'LIMIT', 0, limit)
for _, lease in ipairs(leases) do
  local key = P.lease .. lease
  for _, name in ipairs(redis.call('SMEMBERS', key)) do
    if n >= limit then break end
    local h = to_table(redis.call('HGETALL', P.record .. name))
    if h.instance_id and h.lease == lease then
      expire(name, h, 'heartbeat_missed', now)
      n = n + 1
    else
      redis.call('SREM', key, name)
    end
  end
  if redis.call('EXISTS', key) == 0 then redis.call('ZREM', P.leases, lease) end
  if n >= limit then break end
end

if n < limit then
  local names = redis.call('ZRANGEBYSCORE', P.deadlines, '-inf', '(' .. cutoff, 'LIMIT', 0,
    limit - n)
  for _, name in ipairs(names) do
    local h = to_table(redis.call('HGETALL', P.record .. name))
    if not h.instance_id then
      redis.call('ZREM', P.deadlines, name)
    elseif h.lease and tonumber(redis.call('ZSCORE', P.leases, h.lease) or '0') >= cutoff then
      redis.call('ZREM', P.deadlines, name)
    else
      expire(name, h, 'heartbeat_missed', now)
      n = n + 1
    end
  end
end
redis.call('ZREMRANGEBYSCORE', P.tombstones, '-inf', '(' .. (now - P.keep))
return { n, cutoff, now, wm, began }
