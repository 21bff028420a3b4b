-- announce: register or update one agent, refusing a name held by another live instance.
-- KEYS and ARGV[1..6]: see common.lua.
-- ARGV[7] name  ARGV[8] instance_id  ARGV[9] control entry id  ARGV[10] ttl_ms
-- ARGV[11] record JSON  ARGV[12..] the record hash as field, value, field, value ...
-- Returns {'name_taken', instance_id, host, pid, last_seen, expires_in_ms}
--      or {'ok', registered_at, event type or ''}.
-- @include common
local name, inst, eid, ttl = ARGV[7], ARGV[8], ARGV[9], tonumber(ARGV[10])
local record_json = ARGV[11]
local rkey = P.record .. name
local now = now_ms()
local old = to_table(redis.call('HGETALL', rkey))

if old.instance_id and old.instance_id ~= inst then
  -- judged at the announcement's own time (never later than now): the holder's heartbeats
  -- written before it have been applied, those after it are still waiting in the stream
  local judged_at = math.min(now, entry_ms(eid))
  local dl = tonumber(redis.call('ZSCORE', P.deadlines, name) or '0')
  if dl > judged_at then
    return { 'name_taken', old.instance_id, old.host or '', old.pid or '', old.last_seen or '',
      tostring(math.max(0, dl - now)) }
  end
  expire(name, old, 'replaced', now)
  old = {}
end

local same = old.instance_id == inst
local new = {}
local order = {}
for i = 12, #ARGV, 2 do
  new[ARGV[i]] = ARGV[i + 1]
  order[#order + 1] = ARGV[i]
end
if same and old.registered_at then
  new.registered_at = old.registered_at
  record_json = string.gsub(record_json, '"registered_at":"[^"]*"',
    '"registered_at":"' .. old.registered_at .. '"', 1)
end

local changes = {}
local old_deadline = 0
if same then
  local seen = {}
  local IGNORED = { load = true, last_seen = true, registered_at = true }
  local RAW = { capabilities = true, tags = true, metadata = true, pid = true,
    max_concurrency = true, heartbeat_ms = true, ttl_ms = true }
  local function enc(k, v)
    if v == nil then return 'null' end
    if RAW[k] then return v end
    return cjson.encode(v)
  end
  local function diff(k)
    if seen[k] or IGNORED[k] then return end
    seen[k] = true
    if old[k] ~= new[k] then
      changes[#changes + 1] = cjson.encode(k) .. ':[' .. enc(k, old[k]) .. ',' .. enc(k, new[k]) .. ']'
    end
  end
  for _, k in ipairs(order) do diff(k) end
  for k, _ in pairs(old) do diff(k) end
  old_deadline = tonumber(redis.call('ZSCORE', P.deadlines, name) or '0')
  unindex(name, old)
else
  redis.call('DEL', rkey)
end

local hset = { 'HSET', rkey }
for _, k in ipairs(order) do
  hset[#hset + 1] = k
  hset[#hset + 1] = new[k]
end
redis.call(unpack(hset))
redis.call('SADD', P.agents, name)
redis.call('SADD', P.role .. new.role, name)
for _, c in ipairs(json_list(new.capabilities)) do redis.call('SADD', P.cap .. c, name) end
for _, t in ipairs(json_list(new.tags)) do redis.call('SADD', P.tag .. t, name) end
-- The agent starts heartbeating when it hears it was accepted, so its first deadline counts
-- from now (processing time), not from the announce's entry time: behind a backlog (a fleet
-- starting at once) the entry time may already be a TTL old. A re-announce processed after
-- newer heartbeats never moves the deadline back.
redis.call('ZADD', P.deadlines, math.max(now + ttl, entry_ms(eid) + ttl, old_deadline), name)

local event = ''
local base = { 'name', name, 'instance_id', inst, 'role', new.role, 'at', iso(now) }
if not same then
  event = 'agent_registered'
  local f = { 'type', event }
  for _, v in ipairs(base) do f[#f + 1] = v end
  f[#f + 1] = 'record'
  f[#f + 1] = record_json
  emit(f)
elseif #changes > 0 then
  event = 'agent_updated'
  local f = { 'type', event }
  for _, v in ipairs(base) do f[#f + 1] = v end
  f[#f + 1] = 'changes'
  f[#f + 1] = '{' .. table.concat(changes, ',') .. '}'
  f[#f + 1] = 'record'
  f[#f + 1] = record_json
  emit(f)
end
return { 'ok', new.registered_at, event }
