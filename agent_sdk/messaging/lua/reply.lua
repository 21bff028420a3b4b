-- reply.lua: answer a request and acknowledge it in one round trip.
-- KEYS[1]: the requester's reply list (the request's reply_to)
-- KEYS[2]: the stream the request was read from (inbox or role queue); left out, with no ids
--          to acknowledge, on a Redis Cluster (another slot: the caller XACKs after this call)
-- ARGV[1]: the reply envelope (JSON)
-- ARGV[2]: PEXPIRE of the reply list, in ms
-- ARGV[3]: the consumer group of KEYS[2]
-- ARGV[4..]: entry ids to XACK in KEYS[2] (the request, plus other finished entries)
-- Returns 1.
redis.call('LPUSH', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if #ARGV >= 4 then
  redis.call('XACK', KEYS[2], ARGV[3], unpack(ARGV, 4))
end
return 1
