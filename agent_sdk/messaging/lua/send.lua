-- send.lua: check that someone can receive, append the envelope to a stream, ring its doorbell.
-- KEYS[1]: the registry key to check (agent record hash, or role index set)
-- KEYS[2]: the stream to append to (agent inbox, or role queue)
-- KEYS[3] (optional, role sends without a version): the role's default version key
-- ARGV[1]: check mode: "record" (KEYS[1] must exist), "role" (SCARD KEYS[1] > 0), "none"
-- ARGV[2]: approximate MAXLEN of the stream
-- ARGV[3]: the doorbell channel of the stream's family (the normal-priority stream .. ':bell')
-- ARGV[4]: what to PUBLISH on it: the priority of KEYS[2] ('' for normal)
-- ARGV[5..]: the envelope as stream field, value pairs
-- Returns the new entry id; false (nil) when nobody can receive; or, when KEYS[3] holds a
-- default version, {version} and nothing is appended (the sender routes to a member of it).
if KEYS[3] then
  local default = redis.call('GET', KEYS[3])
  if default then return {default} end
end
local mode = ARGV[1]
if mode == 'record' then
  if redis.call('EXISTS', KEYS[1]) == 0 then return false end
elseif mode == 'role' then
  if redis.call('SCARD', KEYS[1]) == 0 then return false end
end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, 5))
redis.call('PUBLISH', ARGV[3], ARGV[4])
return id
