-- Shared helpers, pasted by coordinator/scripts.py where a script says "-- @include common".
-- Convention of every registry script:
-- KEYS[1] R:agents  KEYS[2] R:deadlines  KEYS[3] R:events
-- ARGV[1] record prefix (R:agent:)  ARGV[2] role index prefix  ARGV[3] capability index prefix
-- ARGV[4] tag index prefix  ARGV[5] events MAXLEN  ARGV[6] events pub/sub channel
local P = {
  agents = KEYS[1], deadlines = KEYS[2], events = KEYS[3],
  record = ARGV[1], role = ARGV[2], cap = ARGV[3], tag = ARGV[4],
  maxlen = ARGV[5], channel = ARGV[6],
}
local RAW_JSON = { changes = true, record = true }

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function entry_ms(id)
  return tonumber(string.match(id, '^(%d+)'))
end

-- milliseconds since the epoch -> 2026-11-21T19:52:45.123Z (days-from-civil, H. Hinnant)
local function iso(ms)
  local s = math.floor(ms / 1000)
  local milli = ms - s * 1000
  local days = math.floor(s / 86400)
  local rem = s - days * 86400
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
    - math.floor(doe / 146096)) / 365)
  local y = yoe + era * 400
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  if m <= 2 then y = y + 1 end
  return string.format('%04d-%02d-%02dT%02d:%02d:%02d.%03dZ', y, m, d,
    math.floor(rem / 3600), math.floor((rem % 3600) / 60), rem % 60, milli)
end

local function to_table(flat)
  local t = {}
  for i = 1, #flat, 2 do t[flat[i]] = flat[i + 1] end
  return t
end

local function json_list(text)
  if not text or text == '' then return {} end
  local ok, v = pcall(cjson.decode, text)
  if ok and type(v) == 'table' then return v end
  return {}
end

-- XADD the change-feed entry (flat fields) and PUBLISH its JSON mirror; returns the revision.
local function emit(fields)
  local args = { 'XADD', P.events, 'MAXLEN', '~', P.maxlen, '*' }
  for i = 1, #fields do args[#args + 1] = fields[i] end
  local id = redis.call(unpack(args))
  local parts = { '"revision":' .. cjson.encode(id) }
  for i = 1, #fields, 2 do
    local k, v = fields[i], fields[i + 1]
    if RAW_JSON[k] then
      parts[#parts + 1] = cjson.encode(k) .. ':' .. v
    else
      parts[#parts + 1] = cjson.encode(k) .. ':' .. cjson.encode(v)
    end
  end
  redis.call('PUBLISH', P.channel, '{' .. table.concat(parts, ',') .. '}')
  return id
end

-- remove a record (given as a table of its hash fields) from every index and delete it
local function unindex(name, h)
  redis.call('SREM', P.agents, name)
  if h.role then redis.call('SREM', P.role .. h.role, name) end
  for _, c in ipairs(json_list(h.capabilities)) do redis.call('SREM', P.cap .. c, name) end
  for _, t in ipairs(json_list(h.tags)) do redis.call('SREM', P.tag .. t, name) end
  redis.call('ZREM', P.deadlines, name)
  redis.call('DEL', P.record .. name)
end

local function expire(name, h, reason, now)
  unindex(name, h)
  local fields = { 'type', 'agent_expired', 'name', name, 'instance_id', h.instance_id or '',
    'role', h.role or '', 'at', iso(now), 'reason', reason }
  if h.last_seen then
    fields[#fields + 1] = 'last_seen'
    fields[#fields + 1] = h.last_seen
  end
  return emit(fields)
end
