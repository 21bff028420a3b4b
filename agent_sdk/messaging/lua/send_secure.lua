-- send_secure.lua (acl mode): send.lua with the receiver's limits and a proof of the sender.
-- KEYS[1]: the registry key to check (agent record hash, or role index set)
-- KEYS[2]: the stream to append to (agent inbox, or role queue, of some priority)
-- KEYS[3]: the sender's proof zset (<ns>:agent:{<sender>}:sent)
-- KEYS[4]: the receiver's limits hash (fields maxlen, max_bytes; written by the receiver)
-- ARGV[1]: check mode: "record", "role" or "none"
-- ARGV[2]: the consumer group of KEYS[2] ("agent")
-- ARGV[3]: the doorbell channel; ARGV[4]: what to PUBLISH on it
-- ARGV[5]: proof_keep in ms
-- ARGV[6..]: the envelope as stream field, value pairs
-- Limits are the receiver's (defaults below when it published none): a message larger than
-- max_bytes is refused "TOO_LARGE ...", a send while the stream holds maxlen unconsumed entries
-- (not yet delivered, or delivered and not acknowledged) is refused "INBOX_FULL ...": nothing is
-- ever trimmed that a reader has not consumed. Consumed entries are trimmed once the stream is
-- longer than maxlen (XTRIM MINID below the oldest entry still pending or not delivered).
-- Returns the new entry id, or false when nobody can receive.
local DEFAULT_MAXLEN, DEFAULT_BYTES = 10000, 1048576 + 65536
local mode = ARGV[1]
if mode == 'record' then
  if redis.call('EXISTS', KEYS[1]) == 0 then return false end
elseif mode == 'role' then
  if redis.call('SCARD', KEYS[1]) == 0 then return false end
end
local lim = redis.call('HMGET', KEYS[4], 'maxlen', 'max_bytes')
local maxlen = tonumber(lim[1]) or DEFAULT_MAXLEN
local max_bytes = tonumber(lim[2]) or DEFAULT_BYTES
local size = 0
for i = 6, #ARGV do size = size + #ARGV[i] end
if size > max_bytes then
  return redis.error_reply('TOO_LARGE message of ' .. size .. ' bytes; the receiver accepts ' ..
    max_bytes)
end
local len = redis.call('XLEN', KEYS[2])
if len >= maxlen then
  local unread, oldest = len, nil
  local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[2])
  if ok then
    for _, g in ipairs(groups) do
      local info = {}
      for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
      if info['name'] == ARGV[2] then
        local pend = redis.call('XPENDING', KEYS[2], ARGV[2])
        local last = info['last-delivered-id']
        local lag = info['lag']
        if not lag then
          lag = #redis.call('XRANGE', KEYS[2], '(' .. last, '+', 'COUNT', maxlen + 1)
        end
        unread = lag + pend[1]
        oldest = pend[2] or last
        if not pend[2] then
          -- nothing pending: everything up to last-delivered-id is consumed
          local ms, seq = string.match(last, '^(%d+)-(%d+)$')
          oldest = ms .. '-' .. (tonumber(seq) + 1)
        end
      end
    end
  end
  if unread >= maxlen then
    return redis.error_reply('INBOX_FULL ' .. KEYS[2] .. ' holds ' .. unread ..
      ' unconsumed messages (its receiver allows ' .. maxlen .. ')')
  end
  if oldest then redis.call('XTRIM', KEYS[2], 'MINID', '~', oldest) end
end
local id = redis.call('XADD', KEYS[2], '*', unpack(ARGV, 6))
prove(KEYS[3], KEYS[2], id, ARGV, 6, ARGV[5])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return id
