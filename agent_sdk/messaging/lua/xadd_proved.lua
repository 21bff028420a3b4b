-- xadd_proved.lua (acl mode): append an entry (a control entry, a replayed message) and prove it.
-- KEYS[1]: the stream; KEYS[2]: the writer's proof zset
-- ARGV[1]: approximate MAXLEN of the stream (0: none); ARGV[2]: proof_keep in ms
-- ARGV[3]: a doorbell channel to PUBLISH '' on ('' = none)
-- ARGV[4..]: the entry as field, value pairs
-- Returns the new entry id.
local id
if tonumber(ARGV[1]) > 0 then
  id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(ARGV, 4))
else
  id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 4))
end
prove(KEYS[2], KEYS[1], id, ARGV, 4, ARGV[2])
if ARGV[3] ~= '' then redis.call('PUBLISH', ARGV[3], '') end
return id
