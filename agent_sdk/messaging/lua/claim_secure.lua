-- claim_secure.lua (acl mode): claim.lua, plus a verdict per entry (see read_secure.lua).
-- KEYS[1]: the stream; ARGV[1]: group; ARGV[2]: consumer; ARGV[3]: min idle ms;
-- ARGV[4]: XAUTOCLAIM cursor; ARGV[5]: COUNT; ARGV[6]: the proof key prefix "<ns>:agent:{"
-- Returns {next cursor, entries, delivery counts, verdicts}.
local res = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], 'COUNT', ARGV[5])
local counts, verdicts = {}, {}
for i, entry in ipairs(res[2]) do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], entry[1], entry[1], 1)
  if p[1] then counts[i] = p[1][4] else counts[i] = 0 end
  verdicts[i] = verified(KEYS[1], entry[1], entry[2], ARGV[6])
end
return {res[1], res[2], counts, verdicts}
