-- lost.lua: entries of a stream removed (XADD MAXLEN, XTRIM) before its group read them; each
-- loss is reported once, whoever of the group's readers runs this first.
-- KEYS[1]: the stream (an inbox or role queue); KEYS[2]: the losses reported so far (<stream>:lost)
-- ARGV[1]: the consumer group
-- Redis 7 keeps the group's lag as entries-added - entries-read, which still counts entries
-- trimmed before they were delivered: lost = lag - the entries after last-delivered-id.
-- Returns {losses not reported before, losses in all}; {-1, 0} when Redis cannot tell (no lag
-- field: Redis 6.2; lag nil: an XDEL in the unread range).
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, 0} end
local lag, last = nil, nil
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local t = {}
  for i = 1, #g, 2 do t[g[i]] = g[i + 1] end
  if t.name == ARGV[1] then lag, last = t.lag, t['last-delivered-id'] end
end
if not lag then return {-1, 0} end
local lost = 0
if lag > 0 then
  lost = lag - #redis.call('XRANGE', KEYS[1], '(' .. last, '+', 'COUNT', lag)
end
local seen = tonumber(redis.call('GET', KEYS[2]) or '0')
if lost ~= seen then redis.call('SET', KEYS[2], lost) end
if lost > seen then return {lost - seen, lost} end
return {0, lost}
