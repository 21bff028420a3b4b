-- send.lua: check that someone can receive, append the envelope to a stream, ring its doorbell.
-- ARGV[1]: check mode: "record" (KEYS[1], an agent record hash, must exist), "role" (KEYS[1],
--          a role index set, must not be empty), "none" (no check: KEYS[1] is the stream; on a
--          Redis Cluster the registry lives in another slot, so the sender checks it in a call
--          of its own first and passes "none")
-- KEYS[1] ("record", "role"): the registry key to check
-- KEYS[s]: the stream to append to (agent inbox, or role queue): KEYS[2] after a check, else
--          KEYS[1]
-- KEYS[s + 1] (optional, role sends without a version): the role's default version key
-- ARGV[2]: approximate MAXLEN of the stream
-- ARGV[3]: the doorbell channel of the stream's family (the normal-priority stream .. ':bell',
--          same slot); on a cluster the script is loaded with SPUBLISH instead of PUBLISH
-- ARGV[4]: what to PUBLISH on it: the priority of the stream ('' for normal)
-- ARGV[5..]: the envelope as stream field, value pairs
-- Returns the new entry id; false (nil) when nobody can receive; or, when the default version
-- key holds a version, {version} and nothing is appended (the sender routes to a member of it).
local mode = ARGV[1]
local s = 1
if mode == 'record' or mode == 'role' then s = 2 end
if KEYS[s + 1] then
  local default = redis.call('GET', KEYS[s + 1])
  if default then return {default} end
end
if mode == 'record' then
  if redis.call('EXISTS', KEYS[1]) == 0 then return false end
elseif mode == 'role' then
  if redis.call('SCARD', KEYS[1]) == 0 then return false end
end
local id = redis.call('XADD', KEYS[s], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, 5))
redis.call('PUBLISH', ARGV[3], ARGV[4])
return id
