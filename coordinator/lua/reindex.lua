-- reindex: build the role x capability sets (R:role:<role>:cap:<capability>) of records written
-- before they existed, a slice of R:agents at a time; when the scan is done, R:layout = 2 (from
-- then on discovery intersects those sets). Safe to run again and from several coordinators:
-- SADD of a member already there changes nothing, and records announced meanwhile index
-- themselves.
-- KEYS[1] R:agents  KEYS[2] R:layout
-- ARGV[1] record prefix  ARGV[2] role index prefix  ARGV[3] SSCAN cursor  ARGV[4] COUNT
-- Returns the next cursor ('0': done, the layout is set).
if redis.call('GET', KEYS[2]) == '2' then return '0' end
local scan = redis.call('SSCAN', KEYS[1], ARGV[3], 'COUNT', ARGV[4])
for _, name in ipairs(scan[2]) do
  local h = redis.call('HMGET', ARGV[1] .. name, 'role', 'capabilities')
  if h[1] and h[2] then
    local ok, caps = pcall(cjson.decode, h[2])
    if ok and type(caps) == 'table' then
      for _, c in ipairs(caps) do
        redis.call('SADD', ARGV[2] .. h[1] .. ':cap:' .. c, name)
      end
    end
  end
end
if scan[1] == '0' then redis.call('SET', KEYS[2], '2') end
return scan[1]
