-- deadletter.lua: move a stream entry to the dead-letter stream and acknowledge it.
-- KEYS[1]: the dead-letter stream
-- KEYS[2]: the source stream (inbox or role queue); left out on a Redis Cluster (another slot:
--          the caller XACKs after this call)
-- ARGV[1]: the consumer group of KEYS[2] ("" = nothing to acknowledge)
-- ARGV[2]: approximate MAXLEN of the dead-letter stream
-- ARGV[3]: the source entry id
-- ARGV[4..]: the dead letter as field, value pairs
-- Returns the dead letter's entry id.
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, 4))
if ARGV[1] ~= '' then
  redis.call('XACK', KEYS[2], ARGV[1], ARGV[3])
end
return id
