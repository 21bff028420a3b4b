-- leave.lua: delete a stopped instance's consumer from the group of each stream where it holds
-- nothing pending (its pending entries, if any, stay: others claim them). Atomic per call.
-- KEYS[1..n]: the streams it read (inbox, role queue, their priority streams)
-- ARGV[1]: the consumer group; ARGV[2]: the consumer (the instance id)
-- Returns how many consumers were deleted.
local deleted = 0
for _, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 then
    local ok, pending = pcall(redis.call, 'XPENDING', key, ARGV[1], '-', '+', 1, ARGV[2])
    if ok and #pending == 0 then
      deleted = deleted + redis.call('XGROUP', 'DELCONSUMER', key, ARGV[1], ARGV[2])
    end
  end
end
return deleted
