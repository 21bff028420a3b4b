-- heartbeat batch: extend deadlines, refresh last_seen/load/status, XACK every entry.
-- KEYS[1..3] and ARGV[1..6]: see common.lua.  KEYS[4] R:control.
-- ARGV[7] consumer group  ARGV[8] the batch: one line per heartbeat, "<entry id> <name>
-- <instance_id> <load> <status>" (names never hold spaces), lines joined by newlines.
-- Returns the 1-based positions of heartbeats whose instance the registry does not hold.
-- @include common
local unknown = {}
local ids = {}
local n = 0
local now = nil
for eid, name, inst, load, status in string.gmatch(ARGV[8], '(%S+) (%S+) (%S+) (%S+) (%S+)') do
  n = n + 1
  ids[n] = eid
  local rkey = P.record .. name
  local cur = redis.call('HMGET', rkey, 'instance_id', 'ttl_ms', 'status', 'load', 'role')
  local ttl = tonumber(cur[2])
  if cur[1] ~= inst or not ttl then  -- not held (or a hand-edited record): re-announce
    unknown[#unknown + 1] = n
  else
    local ems = entry_ms(eid)
    -- apply a heartbeat at least as new as the deadline (an announce sets it from its own
    -- processing time, which a heartbeat written in the same millisecond equals); an older
    -- one (claimed late from a dead coordinator) must not roll status or load back
    local dl = tonumber(redis.call('ZSCORE', P.deadlines, name) or '0')
    if ems + ttl >= dl then
      if ems + ttl > dl then redis.call('ZADD', P.deadlines, ems + ttl, name) end
      if cur[3] ~= status then
        redis.call('HSET', rkey, 'last_seen', iso(ems), 'load', load, 'status', status)
        now = now or now_ms()
        emit({ 'type', 'agent_updated', 'name', name, 'instance_id', inst, 'role', cur[5] or '',
          'at', iso(now), 'changes',
          '{"status":[' .. cjson.encode(cur[3] or '') .. ',' .. cjson.encode(status) .. ']}' })
      elseif cur[4] ~= load then
        redis.call('HSET', rkey, 'last_seen', iso(ems), 'load', load)
      else
        redis.call('HSET', rkey, 'last_seen', iso(ems))
      end
    end
  end
end
for a = 1, n, 1000 do
  redis.call('XACK', KEYS[4], ARGV[7], unpack(ids, a, math.min(n, a + 999)))
end
return unknown
