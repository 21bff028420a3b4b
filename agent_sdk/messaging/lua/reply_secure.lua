-- reply_secure.lua (acl mode): answer a request and acknowledge it in one round trip.
-- KEYS[1]: the requester's reply list (the request's reply_to)
-- KEYS[2]: the stream the request was read from (inbox or role queue)
-- ARGV[1]: the reply envelope (JSON)
-- ARGV[2]: the consumer group of KEYS[2]
-- ARGV[3..]: entry ids to XACK in KEYS[2]
-- Unlike reply.lua there is no PEXPIRE: a responder may only append to another's reply list
-- (permission to expire it would be permission to destroy the replies waiting there).
-- Returns 1.
redis.call('LPUSH', KEYS[1], ARGV[1])
if #ARGV >= 3 then
  redis.call('XACK', KEYS[2], ARGV[2], unpack(ARGV, 3))
end
return 1
