-- send.lua: check that someone can receive, append the envelope to a stream, ring its doorbell.
-- KEYS[1]: the registry key to check (agent record hash, or role index set); left out on a
--          Redis Cluster, where the registry lives in another slot (the sender checks it in a
--          call of its own before this one, and passes mode "none")
-- KEYS[#KEYS]: the stream to append to (agent inbox, or role queue)
-- ARGV[1]: check mode: "record" (KEYS[1] must exist), "role" (SCARD KEYS[1] > 0), "none"
-- ARGV[2]: approximate MAXLEN of the stream
-- ARGV[3]: the doorbell channel of the stream's family (the normal-priority stream .. ':bell',
--          same slot); on a cluster the script is loaded with SPUBLISH instead of PUBLISH
-- ARGV[4]: what to PUBLISH on it: the priority of KEYS[#KEYS] ('' for normal)
-- ARGV[5..]: the envelope as stream field, value pairs
-- Returns the new entry id, or false (nil) when nobody can receive.
local mode = ARGV[1]
if mode == 'record' then
  if redis.call('EXISTS', KEYS[1]) == 0 then return false end
elseif mode == 'role' then
  if redis.call('SCARD', KEYS[1]) == 0 then return false end
end
local id = redis.call('XADD', KEYS[#KEYS], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, 5))
redis.call('PUBLISH', ARGV[3], ARGV[4])
return id
