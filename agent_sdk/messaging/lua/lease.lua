-- lease.lua: renew the lease on entries a consumer holds (reset their idle time).
-- KEYS[1]: the stream (inbox or role queue)
-- ARGV[1]: the consumer group
-- ARGV[2]: the consumer (this instance id)
-- ARGV[3..]: the entry ids this consumer is working on
-- Entries still pending for ARGV[2] get XCLAIM ... JUSTID to ARGV[2] (idle time 0); entries that
-- another consumer took over (or that are no longer pending) are left alone and returned.
local mine = {KEYS[1], ARGV[1], ARGV[2], 0}
local lost = {}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then
    mine[#mine + 1] = ARGV[i]
  else
    lost[#lost + 1] = ARGV[i]
  end
end
if #mine > 4 then
  mine[#mine + 1] = 'JUSTID'
  redis.call('XCLAIM', unpack(mine))
end
return lost
