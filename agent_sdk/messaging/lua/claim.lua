-- claim.lua: take over entries idle for too long, with their delivery counts.
-- KEYS[1]: the stream (inbox or role queue)
-- ARGV[1]: the consumer group
-- ARGV[2]: the consumer taking them (this instance id)
-- ARGV[3]: minimum idle time in ms
-- ARGV[4]: XAUTOCLAIM start cursor
-- ARGV[5]: COUNT
-- Returns {next cursor, entries ({id, {field, value, ...}}), delivery counts (same order)}.
local res = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], 'COUNT', ARGV[5])
local counts = {}
for i, entry in ipairs(res[2]) do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], entry[1], entry[1], 1)
  if p[1] then counts[i] = p[1][4] else counts[i] = 0 end
end
return {res[1], res[2], counts}
