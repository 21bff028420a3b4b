-- proof.lua: included at the top of the acl-mode scripts (docs/SECURITY.md, "Proofs").
-- A proof is the SHA-1 of "<stream key>\n<entry id>\n<field>\n<value>\n..." (the entry as
-- written), kept in the sender's zset <ns>:agent:{<sender>}:sent, which only the Redis user that
-- owns that name may write. An entry is verified when its sender's zset holds its digest.
-- The entry's fields are flat[from], flat[from + 1], ... (ARGV itself in the writing scripts:
-- no copy of the entry is made, each costs Redis time at every send).
local function proof_digest(key, id, flat, from)
  return redis.sha1hex(key .. '\n' .. id .. '\n' .. table.concat(flat, '\n', from))
end

local function field_of(flat, name)
  for i = 1, #flat, 2 do
    if flat[i] == name then return flat[i + 1] end
  end
  return nil
end

-- 1 when the entry's sender proved it, 0 otherwise (no sender, a bad name, no proof)
local function verified(key, id, flat, prefix)
  if not flat then return 1 end -- deleted while pending: nothing will be handled
  local sender = field_of(flat, 'sender')
  if not sender or #sender > 128 or not string.match(sender, '^[%w][%w%._@/%-]*$') then
    return 0
  end
  local score = redis.call('ZSCORE', prefix .. sender .. '}:sent', proof_digest(key, id, flat, 1))
  if score then return 1 end
  return 0
end

-- record the proof of an entry just written (fields flat[from..]); prune proofs older than
-- keep_ms when the entry is the first of its millisecond in its stream, or every 64th (a burst
-- pays the prune once per 64 entries, not at each: it costs about as much as the ZADD)
-- The proof's score is the entry id's milliseconds: the server's clock when XADD * wrote it (no
-- TIME call of our own).
local function prove(proof_key, key, id, flat, from, keep_ms)
  local ms, seq = string.match(id, '^(%d+)%-(%d+)$')
  local now = tonumber(ms)
  redis.call('ZADD', proof_key, now, proof_digest(key, id, flat, from))
  if tonumber(seq) % 64 == 0 then
    redis.call('ZREMRANGEBYSCORE', proof_key, '-inf', now - tonumber(keep_ms))
  end
end
