-- state.lua: a fenced write to an agent's persisted state (agent_sdk/state.py).
-- KEYS[1] <ns>:agent:{<name>}:state
-- ARGV[1] the writer's epoch  ARGV[2] 'set' or 'del'  ARGV[3] the key  ARGV[4] the JSON value
-- The hash keeps the largest epoch that wrote to it in the field '_epoch'. A write from a
-- smaller epoch (an instance that lost its name) changes nothing and returns the stored epoch;
-- an accepted write returns nil.
local epoch = tonumber(ARGV[1])
local held = tonumber(redis.call('HGET', KEYS[1], '_epoch') or '0')
if held > epoch then return held end
if held < epoch then redis.call('HSET', KEYS[1], '_epoch', ARGV[1]) end
if ARGV[2] == 'set' then
  redis.call('HSET', KEYS[1], ARGV[3], ARGV[4])
else
  redis.call('HDEL', KEYS[1], ARGV[3])
end
return nil
