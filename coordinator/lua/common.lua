-- Shared helpers, pasted by coordinator/scripts.py where a script says "-- @include common".
-- Convention of every registry script:
-- KEYS[1] R:agents  KEYS[2] R:deadlines  KEYS[3] R:events  KEYS[4] R:control  KEYS[5] R:clock
-- KEYS[6] R:tombstones  KEYS[7] R:leases
-- ARGV[1] record prefix (R:agent:)  ARGV[2] role index prefix  ARGV[3] capability index prefix
-- ARGV[4] tag index prefix  ARGV[5] events MAXLEN  ARGV[6] events pub/sub channel
-- ARGV[7] consumer group of the coordinators  ARGV[8] stall threshold ms  ARGV[9] grace ms
-- ARGV[10] how long tombstones are kept (ms)  ARGV[11] lease set prefix (R:lease:)
local P = {
  agents = KEYS[1], deadlines = KEYS[2], events = KEYS[3], control = KEYS[4], clock = KEYS[5],
  tombstones = KEYS[6], leases = KEYS[7],
  record = ARGV[1], role = ARGV[2], cap = ARGV[3], tag = ARGV[4],
  maxlen = ARGV[5], channel = ARGV[6], group = ARGV[7],
  stall = tonumber(ARGV[8]), grace = tonumber(ARGV[9]), keep = tonumber(ARGV[10]),
  lease = ARGV[11],
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
  local caps = json_list(h.capabilities)
  if h.role then
    redis.call('SREM', P.role .. h.role, name)
    for _, c in ipairs(caps) do redis.call('SREM', P.role .. h.role .. ':cap:' .. c, name) end
  end
  for _, c in ipairs(caps) do redis.call('SREM', P.cap .. c, name) end
  for _, t in ipairs(json_list(h.tags)) do redis.call('SREM', P.tag .. t, name) end
  if h.lease then redis.call('SREM', P.lease .. h.lease, name) end
  redis.call('ZREM', P.deadlines, name)
  redis.call('DEL', P.record .. name)
end

-- An instance that left or was expired gets a tombstone: R:tombstones, score = its fence (ms).
-- An announce or heartbeat of that instance written before the fence is stale: applied late
-- (claimed from a frozen coordinator, a duplicate) it must not bring the instance back.
local function tombstone(inst, fence)
  if inst and inst ~= '' then redis.call('ZADD', P.tombstones, 'GT', fence, inst) end
end

-- whether a control entry of `inst` written at `ems` predates the instance's tombstone
local function fenced(inst, ems)
  local fence = redis.call('ZSCORE', P.tombstones, inst)
  return fence ~= false and ems < tonumber(fence)
end

-- A name's deadline: its own (R:deadlines), or, for a name registered under a host's lease
-- (the record's `lease` field), the lease's (R:leases); nil if it has neither.
local function deadline_of(name, h)
  local d = redis.call('ZSCORE', P.deadlines, name)
  if not d and h.lease then d = redis.call('ZSCORE', P.leases, h.lease) end
  return d and tonumber(d) or nil
end

local function expire(name, h, reason, now)
  -- fence: the deadline that passed; every announce of this registration applied so far was
  -- written before it (an accepted announce sets the deadline a TTL past its own entry time)
  local dl = deadline_of(name, h) or now
  unindex(name, h)
  tombstone(h.instance_id, math.min(dl, now))
  local fields = { 'type', 'agent_expired', 'name', name, 'instance_id', h.instance_id or '',
    'role', h.role or '', 'at', iso(now), 'reason', reason }
  if h.last_seen then
    fields[#fields + 1] = 'last_seen'
    fields[#fields + 1] = h.last_seen
  end
  return emit(fields)
end

-- The fair cutoff (docs/PROTOCOL.md, "Liveness"): a registration whose deadline is older is
-- dead. It is never later than Redis TIME, nor than the oldest control entry not processed yet
-- (a heartbeat waiting in the stream still counts), and after a stall (nobody judged liveness
-- for longer than the stall threshold: Redis blocked or restarted, every coordinator down) it
-- stays at the stall's start for one grace period. The sweeper and the announce path both use
-- it: no holder is judged dead on a clock that did not run. Updates R:clock.
-- Returns cutoff, watermark (-1: none), 1 if a stall began now else 0.
local function fair_cutoff(now)
  local wm = -1
  if redis.call('EXISTS', P.control) == 1 then
    local last = nil
    for _, g in ipairs(redis.call('XINFO', 'GROUPS', P.control)) do
      local t = to_table(g)
      if t.name == P.group then last = t['last-delivered-id'] end
    end
    local first
    if last then
      first = redis.call('XRANGE', P.control, '(' .. last, '+', 'COUNT', 1)
      local p = redis.call('XPENDING', P.control, P.group)
      if p[1] > 0 then wm = entry_ms(p[2]) end
    else
      first = redis.call('XRANGE', P.control, '-', '+', 'COUNT', 1)
    end
    if first[1] then
      local fm = entry_ms(first[1][1])
      if wm < 0 or fm < wm then wm = fm end
    end
  end

  local c = redis.call('HMGET', P.clock, 'last_tick', 'grace_start', 'grace_until')
  local last_tick, gstart, guntil = tonumber(c[1]), tonumber(c[2]), tonumber(c[3])
  local began = 0
  if last_tick and now - last_tick > P.stall then
    if not (guntil and now < guntil and gstart and gstart < last_tick) then gstart = last_tick end
    guntil = now + P.grace
    began = 1
    redis.call('HSET', P.clock, 'grace_start', gstart, 'grace_until', guntil)
  end
  if not last_tick or now > last_tick then redis.call('HSET', P.clock, 'last_tick', now) end

  local cutoff = now
  if wm >= 0 and wm < cutoff then cutoff = wm end
  if guntil and gstart and now < guntil and gstart < cutoff then cutoff = gstart end
  return cutoff, wm, began
end
