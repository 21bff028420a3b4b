-- discover: the live agents matching a query, in one round trip.
-- KEYS[1 .. n_all]        sets that must all hold the name (R:agents, R:role:<r>, R:cap:<c> ...)
-- KEYS[n_all+1 .. #KEYS]  tag sets (R:tag:<t>): the name must be in at least one
-- ARGV[1] record key prefix (KeySpace.record_prefix, "<ns>:{registry}:agent:")
-- ARGV[2] n_all: how many leading KEYS are "all of" sets; 0 = candidates are the union of the
--         tag sets (no other set to intersect)
-- ARGV[3] statuses to keep, comma-separated ("" = any)
-- ARGV[4] max_load ("" = any): keep agents whose load <= max_load
-- ARGV[5] limit (0 = no limit)
-- Returns an array of HGETALL flat arrays (field, value, field, value, ...).
local prefix = ARGV[1]
local n_all = tonumber(ARGV[2])
local max_load = tonumber(ARGV[4])
local limit = tonumber(ARGV[5])

local statuses = nil
if ARGV[3] ~= '' then
  statuses = {}
  for s in string.gmatch(ARGV[3], '[^,]+') do statuses[s] = true end
end

local candidates
local n_tags = #KEYS - n_all
if n_all == 0 then
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
    for i = n_all + 1, #KEYS do
      if redis.call('SISMEMBER', KEYS[i], name) == 1 then keep = true break end
    end
  end
  if keep then
    local h = redis.call('HGETALL', prefix .. name)
    if #h > 0 and (statuses ~= nil or max_load ~= nil) then
      local status, load
      for i = 1, #h, 2 do
        local f = h[i]
        if f == 'status' then status = h[i + 1] elseif f == 'load' then load = h[i + 1] end
      end
      if statuses ~= nil and not statuses[status or 'ready'] then keep = false end
      if keep and max_load ~= nil and (tonumber(load) or 0) > max_load then keep = false end
    end
    if keep and #h > 0 then
      out[#out + 1] = h
      if limit > 0 and #out >= limit then break end
    end
  end
end
return out
