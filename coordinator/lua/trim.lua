-- trim: drop the control entries the coordinators have processed, then cap the stream.
-- KEYS[1] R:control  ARGV[1] consumer group  ARGV[2] approximate MAXLEN
-- Everything older than the oldest entry not processed yet (the group's oldest pending entry,
-- else its last delivered one) goes (XTRIM MINID ~: whole stream nodes only, so up to ~100
-- processed entries stay). Then MAXLEN ~ caps a backlog nobody reads (its oldest entries
-- go). Only the group of the coordinators is considered: the only reader of this stream.
-- Returns the number of entries removed.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local last = nil
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local t = {}
  for i = 1, #g, 2 do t[g[i]] = g[i + 1] end
  if t.name == ARGV[1] then last = t['last-delivered-id'] end
end
local n = 0
if last then
  local keep = last
  local p = redis.call('XPENDING', KEYS[1], ARGV[1])
  if p[1] > 0 then keep = p[2] end
  n = redis.call('XTRIM', KEYS[1], 'MINID', '~', keep)
end
return n + redis.call('XTRIM', KEYS[1], 'MAXLEN', '~', ARGV[2])
