-- publish_proved.lua (acl mode): PUBLISH a broadcast or topic envelope and prove it.
-- KEYS[1]: the publisher's proof zset
-- ARGV[1]: the channel; ARGV[2]: the message (envelope JSON); ARGV[3]: proof_keep in ms
-- The proof is the digest of "<channel>\n\n<message>" (no entry id: a subscriber also drops an
-- envelope id it has seen). Returns how many subscribers received it.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, redis.sha1hex(ARGV[1] .. '\n\n' .. ARGV[2]))
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[3]))
return redis.call('PUBLISH', ARGV[1], ARGV[2])
