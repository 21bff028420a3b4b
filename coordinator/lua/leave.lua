-- leave: deregister one agent instance at once.
-- KEYS[1..3] and ARGV[1..6]: see common.lua.
-- ARGV[7] name  ARGV[8] instance_id
-- Returns 1 if the instance was registered (and is now removed), else 0.
-- @include common
local name, inst = ARGV[7], ARGV[8]
local h = to_table(redis.call('HGETALL', P.record .. name))
if h.instance_id ~= inst then return 0 end
unindex(name, h)
emit({ 'type', 'agent_deregistered', 'name', name, 'instance_id', inst, 'role', h.role or '',
  'at', iso(now_ms()), 'reason', 'left', 'last_seen', h.last_seen or '' })
return 1
