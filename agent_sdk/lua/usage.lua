-- usage: add one agent instance's usage deltas to the name's stats hash, in one call.
-- KEYS[1]  the stats hash (KeySpace.stats(name))
-- ARGV[1]  the recording instance's id ("" = no instance: add to whatever the hash holds)
-- ARGV[2]  when that instance started recording: ISO-8601 UTC, fixed width (compared as text)
-- ARGV[3]  the deltas as JSON, every value a string:
--          {"<type>": {"n": invocations, "e": errors, "sum": ms, "min": ms, "max": ms,
--                      "last": ISO time, "b": {"le_1": count, ...}}, ...}
-- KEYS[2]  the agent's task history stream (KeySpace.tasks(name))
-- ARGV[4]  its approximate MAXLEN
-- ARGV[5]  the tasks handled since the last flush, oldest first, as JSON: a list of flat
--          field/value lists (agent_sdk/task_history.py); "" or "[]" for none
-- The tasks are appended whichever instance holds the hash: they happened.
-- The hash holds the usage of one instance of the name: when another instance that started
-- earlier holds it, it is cleared first (a new instance starts afresh); the deltas of an
-- instance that started before the one the hash holds (a late flush of a replaced instance)
-- are dropped. Returns 1 when the deltas were added, 0 when they were dropped.
local key = KEYS[1]
if ARGV[5] and ARGV[5] ~= '' and ARGV[5] ~= '[]' then
  for _, fields in ipairs(cjson.decode(ARGV[5])) do
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', unpack(fields))
  end
end
local instance, started = ARGV[1], ARGV[2]
if instance ~= '' then
  local held = redis.call('HMGET', key, 'instance_id', 'started_at')
  if held[1] ~= instance then
    if held[1] and held[2] and held[2] > started then
      return 0
    end
    redis.call('DEL', key)
    redis.call('HSET', key, 'instance_id', instance, 'started_at', started)
  end
else
  redis.call('HSETNX', key, 'started_at', started)
end
for mtype, d in pairs(cjson.decode(ARGV[3])) do
  local f = mtype .. '.'
  redis.call('HINCRBY', key, f .. 'invocations', d.n)
  if d.e ~= '0' then
    redis.call('HINCRBY', key, f .. 'errors', d.e)
  end
  redis.call('HINCRBYFLOAT', key, f .. 'latency_ms.sum', d.sum)
  local low = tonumber(redis.call('HGET', key, f .. 'latency_ms.min'))
  if not low or tonumber(d.min) < low then
    redis.call('HSET', key, f .. 'latency_ms.min', d.min)
  end
  local high = tonumber(redis.call('HGET', key, f .. 'latency_ms.max'))
  if not high or tonumber(d.max) > high then
    redis.call('HSET', key, f .. 'latency_ms.max', d.max)
  end
  for bucket, count in pairs(d.b) do
    redis.call('HINCRBY', key, f .. 'latency_ms.' .. bucket, count)
  end
  redis.call('HSET', key, f .. 'last_at', d.last)
end
return 1
