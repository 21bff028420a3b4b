-- read_secure.lua (acl mode): XREADGROUP one stream and verify each entry's sender.
-- KEYS[1]: the stream (inbox or role queue)
-- ARGV[1]: the consumer group; ARGV[2]: the consumer (instance id); ARGV[3]: COUNT
-- ARGV[4]: the proof key prefix "<ns>:agent:{"
-- Returns {entries ({id, {field, value, ...}}), verdicts (1 verified, 0 not; same order)}.
local res = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[3],
  'STREAMS', KEYS[1], '>')
if not res then return {{}, {}} end
local entries = res[1][2]
local verdicts = {}
for i, e in ipairs(entries) do verdicts[i] = verified(KEYS[1], e[1], e[2], ARGV[4]) end
return {entries, verdicts}
