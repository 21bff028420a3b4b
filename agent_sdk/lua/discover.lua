-- discover: the live agents matching a query, in one round trip.
-- KEYS[1 .. n_all]        sets that must all hold the name (R:agents, R:role:<r>, R:cap:<c> ...)
-- KEYS[n_all+1 .. #KEYS]  tag sets (R:tag:<t>): the name must be in at least one
-- ARGV[1] record key prefix (KeySpace.record_prefix, "<ns>:{registry}:agent:")
-- ARGV[2] n_all: how many leading KEYS are "all of" sets; 0 = candidates are the union of the
--         tag sets (no other set to intersect)
-- ARGV[3] statuses to keep, comma-separated ("" = any)
-- ARGV[4] max_load ("" = any): keep agents whose load <= max_load
-- ARGV[5] limit (0 = no limit)
-- ARGV[6] the deadlines zset (R:deadlines, same slot as the records)
-- ARGV[7] the leases zset (R:leases, same slot)
-- ARGV[8] n_comp: 0, or how many keys end KEYS (after the tag sets): R:layout, then the
--         role x capability sets (R:role:<r>:cap:<c>) of the query's one role and its
--         capabilities; when R:layout is '2' (every record is in them) the candidates are
--         their intersection instead of the role's and capabilities' (fewer names to look up)
-- ARGV[9 ..] the record fields to return, in this order; the first three must be
--         'name', 'status', 'load'
-- Returns one JSON text: an array with one array per match, the HMGET values in ARGV[9 ..]
-- order (false for an absent field), then the name's deadline (ms, or false): its own, or its
-- host's lease's (the record's `lease` field); a lease is renewed without writing the records,
-- so the last renewal is deadline - ttl_ms. One bulk string instead of a nested reply: about the same
-- work in Redis (cjson instead of a RESP item per value), and the client parses one string with
-- a JSON parser instead of building and decoding one bytes object per value.
-- A name whose hash is gone (a sweep in progress) is skipped.
local prefix = ARGV[1]
local n_all = tonumber(ARGV[2])
local max_load = tonumber(ARGV[4])
local limit = tonumber(ARGV[5])
local deadlines, leases = ARGV[6], ARGV[7]
local n_comp = tonumber(ARGV[8])
local fields = {}
for i = 9, #ARGV do fields[#fields + 1] = ARGV[i] end
local lease_deadline = {}

local statuses = nil
if ARGV[3] ~= '' then
  statuses = {}
  for s in string.gmatch(ARGV[3], '[^,]+') do statuses[s] = true end
end

local candidates
local n_tags = #KEYS - n_all - n_comp
if n_comp > 0 and redis.call('GET', KEYS[#KEYS - n_comp + 1]) == '2' then
  local sets = {}
  for i = #KEYS - n_comp + 2, #KEYS do sets[#sets + 1] = KEYS[i] end
  candidates = #sets == 1 and redis.call('SMEMBERS', sets[1]) or redis.call('SINTER', unpack(sets))
elseif n_all == 0 then
  candidates = redis.call('SUNION', unpack(KEYS))
  n_tags = 0
elseif n_all == 1 then
  candidates = redis.call('SMEMBERS', KEYS[1])
else
  local all_keys = {}
  for i = 1, n_all do all_keys[i] = KEYS[i] end
  candidates = redis.call('SINTER', unpack(all_keys))
end

local out = {}
for _, name in ipairs(candidates) do
  local keep = true
  if n_tags > 0 then
    keep = false
    for i = n_all + 1, n_all + n_tags do
      if redis.call('SISMEMBER', KEYS[i], name) == 1 then keep = true break end
    end
  end
  if keep then
    local h = redis.call('HMGET', prefix .. name, unpack(fields))
    if not h[1] then
      keep = false
    elseif statuses ~= nil and not statuses[h[2] or 'ready'] then
      keep = false
    elseif max_load ~= nil and (tonumber(h[3]) or 0) > max_load then
      keep = false
    end
    if keep then
      local d = redis.call('ZSCORE', deadlines, name)
      if not d then
        local lease = redis.call('HGET', prefix .. name, 'lease')
        if lease then
          d = lease_deadline[lease]
          if d == nil then
            d = redis.call('ZSCORE', leases, lease)
            lease_deadline[lease] = d
          end
        end
      end
      h[#fields + 1] = d
      out[#out + 1] = h
      if limit > 0 and #out >= limit then break end
    end
  end
end
if #out == 0 then return '[]' end -- cjson encodes an empty table as {}
return cjson.encode(out)
