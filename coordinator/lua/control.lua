-- control: apply a batch of control entries in stream order, answer them and XACK them.
-- KEYS[1..7] and ARGV[1..11]: see common.lua.  KEYS[8] R:epoch (the registration counter)
-- ARGV[12] PEXPIRE (ms) of the reply lists this script pushes to, or 'return' on a Redis
--          Cluster: the reply lists live in other slots, so the replies are not pushed here but
--          returned ({list, text} pairs, the 6th element of the result) for the caller to push
-- ARGV[13..] the entries in stream order, each starting with its kind:
--   'h' <lines>    a run of heartbeats, one line per entry "<entry id> <name> <instance_id>
--                  <load> <status> <epoch>" (names never hold spaces; epoch 0: not given),
--                  lines joined by newlines
--   'a' <entry id> <name> <instance_id> <ttl_ms> <offset> <reply list> <reply head>
--       <record JSON open> <lease or ''> <role> <c> <capability>... (c of them) <t> <tag>...
--       (t of them) <hash>    an announce. The record JSON comes without its closing brace
--       (the script appends the epoch); <offset> (0-based) is where the value of its
--       "registered_at" starts. <hash> is the record hash as a JSON array of strings, field,
--       value, field, value... (decoded by cjson in C: one argument, cheap to pack); its last
--       pair is "epoch","" and, with a lease, the one before it "seen_ms","" (the script fills
--       both values). Name, instance_id, role, capabilities, tags and lease are identifiers
--       (the coordinator validated them): they go into keys and JSON strings as they are.
--   'l' <entry id> <name> <instance_id> <reply list or ''> <reply head>    a leave
--   'r' <entry id> <lease> <ttl_ms> <names> <instances> <members>    the renewal part of a
--                  host's `lease` entry (names and instance ids as JSON arrays; <members>: how
--                  many names the entry carries, renewed or beating). The lease's deadline
--                  (R:leases) becomes entry time + ttl_ms if that is later, if the lease holds
--                  any name: one ZADD for the whole lease, however many names. Only when the
--                  lease's set (R:lease:<lease>) does not hold as many names as the entry
--                  carries are the names checked (two SMISMEMBERs per 1,000): a name it does
--                  not hold, or whose record is gone (deleted by hand), is reported as a
--                  heartbeat of an unknown instance is (its instance announces again: with
--                  the lease, it joins it). The set holds names, not instances: names are
--                  unique on a host, and a name another host takes leaves this lease's set
--                  first (its record is removed: expiry, replacement)
-- An accepted announce whose record hash has a `lease` field joins that lease's set and lives
-- by the lease's deadline (it has none of its own in R:deadlines); removing the record (leave,
-- expiry, replacement) takes it out. The hash field `seen_ms` (Redis clock) orders the beats
-- of such a name as its own deadline orders the beats of a name without a lease.
-- An accepted announce is answered on its reply list (LPUSH, then PEXPIRE) with
-- <reply head> .. record JSON (with its "epoch" appended) .. '}', a leave that has a reply list
-- with <reply head> .. '{"removed":true}}' (or false).
-- Fencing (docs/PROTOCOL.md): a new registration of a name gets the next epoch (INCR R:epoch,
-- seeded from Redis TIME in microseconds when missing, so epochs keep growing after a data
-- loss); a leave, an expiry and a replacement tombstone the instance (common.lua), and an
-- announce or heartbeat of a tombstoned instance written before its fence is stale: a stale
-- announce is refused (the caller answers `stale`), a stale heartbeat is dropped. A holder is
-- replaced only if its deadline is older than the fair cutoff the sweeper uses (stall grace
-- included).
-- Heartbeats, accepted announces and leaves are XACKed; a refused announce is not (the caller
-- answers it, then acknowledges it), nor an entry Redis refused (the caller dead-letters it).
-- Consecutive heartbeat lines may share an entry id (the beats of one `lease` entry): the entry
-- is acknowledged once.
-- Returns { { {entry id, name, instance_id, holder's instance_id or ''}, ... } (heartbeats from instances
--             the registry does not hold, and who holds the name instead),
--           { {entry id, holder's instance_id, host, pid, last_seen, expires_in_ms}, ... }
--             (announces refused: name_taken),
--           number of leaves that removed their instance,
--           { {entry id, error}, ... } (entries Redis refused: not applied, or partly),
--           { entry id, ... } (announces refused as stale),
--           { {reply list, text}, ... } (the replies, when ARGV[12] is 'return'; else empty) }.
-- @include common
local epoch_key, reply_ttl = KEYS[8], ARGV[12]
local acks = {}
local unknown = {}
local refused = {}
local stale_announces = {}
local removed = 0
local now_cache, now_text = nil, nil
local function now()
  -- one Redis time per call: the whole batch is applied at once
  now_cache = now_cache or now_ms()
  return now_cache
end
local function now_iso()
  now_text = now_text or iso(now())
  return now_text
end
local cutoff_cache = nil
local function cutoff()
  -- computed once per call, when an announce meets another holder (it may record a stall)
  cutoff_cache = cutoff_cache or fair_cutoff(now())
  return cutoff_cache
end

local function next_epoch()
  local e = redis.call('INCR', epoch_key)
  if e == 1 then  -- it was missing: seed it from Redis TIME (epochs keep growing after a loss)
    redis.call('SET', epoch_key, string.format('%.0f', now() * 1000))
    e = redis.call('INCR', epoch_key)
  end
  return string.format('%.0f', e)
end

local deferred = {}
local function reply(list, text)
  if reply_ttl == 'return' then
    deferred[#deferred + 1] = { list, text }
    return
  end
  redis.call('LPUSH', list, text)
  redis.call('PEXPIRE', list, reply_ttl)
end

-- one heartbeat: extend the deadline, refresh last_seen/load/status
local function heartbeat(eid, name, inst, load, status, epoch)
  local rkey = P.record .. name
  local cur = redis.call('HMGET', rkey, 'instance_id', 'ttl_ms', 'status', 'load', 'role', 'epoch',
    'lease', 'seen_ms')
  local ttl = tonumber(cur[2])
  local ems = entry_ms(eid)
  if cur[1] ~= inst or not ttl then
    -- written before the instance left or expired: late, changes nothing; else the instance
    -- is told to re-announce (or that another instance holds its name)
    if not fenced(inst, ems) then unknown[#unknown + 1] = { eid, name, inst, cur[1] or '' } end
    return
  end
  if epoch ~= '0' and cur[6] and epoch ~= cur[6] then return end  -- an earlier registration's
  -- apply a heartbeat at least as new as the deadline (an announce sets it from its own
  -- processing time, which a heartbeat written in the same millisecond equals); an older one
  -- (claimed late from a dead coordinator) must not roll status or load back
  local seen = iso(ems)
  local hset = { 'HSET', rkey, 'last_seen', seen }
  if cur[7] then
    -- under a lease: the name lives by the lease, which the beat extends; `seen_ms` orders it
    if ems < (tonumber(cur[8]) or 0) then return end
    redis.call('ZADD', P.leases, 'GT', ems + ttl, cur[7])
    hset[5], hset[6] = 'seen_ms', ems
  else
    local dl = tonumber(redis.call('ZSCORE', P.deadlines, name) or '0')
    if ems + ttl < dl then return end
    if ems + ttl > dl then redis.call('ZADD', P.deadlines, ems + ttl, name) end
  end
  if cur[4] ~= load then
    hset[#hset + 1] = 'load'
    hset[#hset + 1] = load
  end
  if cur[3] ~= status then
    hset[#hset + 1] = 'status'
    hset[#hset + 1] = status
    redis.call(unpack(hset))
    emit({ 'type', 'agent_updated', 'name', name, 'instance_id', inst, 'role', cur[5] or '',
      'at', now_iso(), 'changes',
      '{"status":[' .. cjson.encode(cur[3] or '') .. ',' .. cjson.encode(status) .. ']}' })
  else
    redis.call(unpack(hset))
  end
end

local IGNORED = { load = true, last_seen = true, registered_at = true, epoch = true,
  lease = true, seen_ms = true }
local RAW = { capabilities = true, tags = true, metadata = true, pid = true,
  max_concurrency = true, heartbeat_ms = true, ttl_ms = true }
local function enc(k, v)
  if v == nil then return 'null' end
  if RAW[k] then return v end
  return cjson.encode(v)
end

-- one announce: its parts from ARGV[i] on (see the header); c, t: its counts, at ARGV[ci],
-- ARGV[ti]; its record hash at ARGV[hi]
local function announce(i, ci, ti, hi)
  local eid, name, inst, ttl = ARGV[i], ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3])
  local offset, reply_to, head, record_json = tonumber(ARGV[i + 4]), ARGV[i + 5], ARGV[i + 6],
    ARGV[i + 7]
  local lease, role = ARGV[i + 8], ARGV[i + 9]
  if lease == '' then lease = nil end
  local ems = entry_ms(eid)
  if now() - ems > P.keep or fenced(inst, ems) then  -- applied late: must not register again
    stale_announces[#stale_announces + 1] = eid
    return
  end
  local rkey = P.record .. name
  local old = to_table(redis.call('HGETALL', rkey))

  if old.instance_id and old.instance_id ~= inst then
    -- judged on the sweeper's fair cutoff, never later than the announcement's own time: the
    -- holder's heartbeats written before it count, and a clock that ran while Redis or every
    -- coordinator was stopped does not
    local judged_at = math.min(cutoff(), ems)
    local dl = deadline_of(name, old) or 0
    if dl >= judged_at then
      refused[#refused + 1] = { eid, old.instance_id, old.host or '', old.pid or '',
        old.last_seen or '', tostring(math.max(0, dl - now())) }
      return
    end
    expire(name, old, 'replaced', now())
    old = {}
  end

  -- the record hash: field, value, ...; its last pair is the epoch's
  local kv = cjson.decode(ARGV[hi])
  local fn = #kv
  local same = old.instance_id == inst
  local epoch = (same and old.epoch) or next_epoch()
  kv[fn] = epoch
  local changes = nil
  local old_deadline = 0
  if same then
    local new, order = {}, {}
    for j = 1, fn - 1, 2 do
      new[kv[j]] = kv[j + 1]
      order[#order + 1] = kv[j]
    end
    if old.registered_at then
      -- keep the first registration time, in the hash and in the JSON (value up to its quote)
      for j = 1, fn - 1, 2 do
        if kv[j] == 'registered_at' then kv[j + 1] = old.registered_at end
      end
      new.registered_at = old.registered_at
      local close = string.find(record_json, '"', offset + 1, true)
      record_json = string.sub(record_json, 1, offset) .. old.registered_at
        .. string.sub(record_json, close)
    end
    changes = {}
    local seen = {}
    local function diff(k)
      if seen[k] or IGNORED[k] then return end
      seen[k] = true
      if old[k] ~= new[k] then
        changes[#changes + 1] = cjson.encode(k) .. ':[' .. enc(k, old[k]) .. ','
          .. enc(k, new[k]) .. ']'
      end
    end
    for _, k in ipairs(order) do diff(k) end
    for k, _ in pairs(old) do diff(k) end
    old_deadline = deadline_of(name, old) or 0
    if old.lease then old_deadline = math.max(old_deadline, (tonumber(old.seen_ms) or 0) + ttl) end
    unindex(name, old)
  elseif next(old) ~= nil then  -- a hash without an instance_id (edited by hand)
    redis.call('DEL', rkey)
  end
  record_json = record_json .. ',"epoch":' .. epoch .. '}'

  -- The agent starts heartbeating when it hears it was accepted, so its first deadline counts
  -- from now (processing time), not from the announce's entry time: behind a backlog (a fleet
  -- starting at once) the entry time may already be a TTL old. A re-announce processed after
  -- newer heartbeats never moves the deadline back.
  local deadline = math.max(now() + ttl, ems + ttl, old_deadline)
  if lease then kv[fn - 2] = deadline - ttl end  -- seen_ms
  redis.call('HSET', rkey, unpack(kv))
  redis.call('SADD', P.agents, name)
  local rset = P.role .. role
  redis.call('SADD', rset, name)
  for j = ci + 1, ci + tonumber(ARGV[ci]) do
    redis.call('SADD', P.cap .. ARGV[j], name)
    redis.call('SADD', rset .. ':cap:' .. ARGV[j], name)  -- the role x capability set
  end
  for j = ti + 1, ti + tonumber(ARGV[ti]) do redis.call('SADD', P.tag .. ARGV[j], name) end
  if lease then
    redis.call('SADD', P.lease .. lease, name)
    redis.call('ZADD', P.leases, 'GT', deadline, lease)
  else
    redis.call('ZADD', P.deadlines, deadline, name)
  end

  if not same or #changes > 0 then
    -- the change-feed entry, and its JSON mirror built here (the values are identifiers, an
    -- ISO time and JSON already: nothing to escape)
    local at = now_iso()
    local kind = same and 'agent_updated' or 'agent_registered'
    local id, extra
    if same then
      local text = '{' .. table.concat(changes, ',') .. '}'
      id = redis.call('XADD', P.events, 'MAXLEN', '~', P.maxlen, '*', 'type', kind, 'name', name,
        'instance_id', inst, 'role', role, 'at', at, 'changes', text, 'record', record_json)
      extra = ',"changes":' .. text
    else
      id = redis.call('XADD', P.events, 'MAXLEN', '~', P.maxlen, '*', 'type', kind, 'name', name,
        'instance_id', inst, 'role', role, 'at', at, 'record', record_json)
      extra = ''
    end
    redis.call('PUBLISH', P.channel, '{"revision":"' .. id .. '","type":"' .. kind
      .. '","name":"' .. name .. '","instance_id":"' .. inst .. '","role":"' .. role
      .. '","at":"' .. at .. '"' .. extra .. ',"record":' .. record_json .. '}')
  end
  if reply_to ~= '' then reply(reply_to, head .. record_json .. '}') end
  acks[#acks + 1] = eid
end

-- one leave: deregister the instance at once if it holds the name
local function leave(eid, name, inst, reply_to, head)
  local h = to_table(redis.call('HGETALL', P.record .. name))
  local held = h.instance_id == inst
  if held then
    unindex(name, h)
    emit({ 'type', 'agent_deregistered', 'name', name, 'instance_id', inst, 'role', h.role or '',
      'at', now_iso(), 'reason', 'left', 'last_seen', h.last_seen or '' })
    removed = removed + 1
  end
  tombstone(inst, now())  -- its announces still waiting somewhere are stale from now on
  if reply_to ~= '' then
    reply(reply_to, head .. '{"removed":' .. (held and 'true' or 'false') .. '}}')
  end
  acks[#acks + 1] = eid
end

-- apply one entry; an error (Redis refused a command) fails that entry only: what it wrote
-- before failing stays, it is not acknowledged, and the caller dead-letters it
local failed = {}
local function try(eid, fn, ...)
  local ok, err = pcall(fn, ...)
  if not ok then
    failed[#failed + 1] = { eid, type(err) == 'table' and tostring(err.err) or tostring(err) }
  end
  return ok
end

-- the renewal part of a lease: one ZADD of the lease's deadline; the names are checked (per
-- 1,000 names one SMISMEMBER of the lease's set and one of R:agents: a record deleted by hand,
-- or lost, leaves its name in the set) only when the set does not hold as many names as the
-- entry carries, or for about one entry in ten. The names and instances come as JSON arrays
-- (cjson decodes them in C), and only then.
local function renew(eid, lease, ttl, names_json, insts_json, members)
  local ems = entry_ms(eid)
  local dl = ems + tonumber(ttl)
  local key = P.lease .. lease
  local held_count = redis.call('SCARD', key)
  if held_count > 0 then redis.call('ZADD', P.leases, 'GT', dl, lease) end
  -- about one entry in ten (by its time) is checked all the same: a record deleted by hand
  -- leaves its name in the set, and is found that way within about ten entries
  if held_count == tonumber(members) and ems % 10 ~= 0 then return end
  local names = cjson.decode(names_json)
  local insts = nil
  for a = 1, #names, 1000 do
    local b = math.min(#names, a + 999)
    local held = redis.call('SMISMEMBER', key, unpack(names, a, b))
    local known = redis.call('SMISMEMBER', P.agents, unpack(names, a, b))
    for k = a, b do
      local j = k - a + 1
      if held[j] ~= 1 or known[j] ~= 1 then
        -- not this lease's: gone (expired, left), held by another instance, or registered
        -- under no lease or another one; the instance is told to announce again, naming the
        -- other holder if there is one (unless the entry predates its tombstone)
        insts = insts or cjson.decode(insts_json)
        if held[j] == 1 then  -- the record is gone: the name leaves the lease
          redis.call('SREM', key, names[k])
          redis.call('ZREM', P.deadlines, names[k])
        end
        local cur = redis.call('HGET', P.record .. names[k], 'instance_id')
        if not fenced(insts[k], ems) then
          local other = (cur and cur ~= insts[k]) and cur or ''
          unknown[#unknown + 1] = { eid, names[k], insts[k], other }
        end
      end
    end
  end
end

local i = 13
while i <= #ARGV do
  local kind = ARGV[i]
  if kind == 'h' then
    local run, n_acks, n_unknown = ARGV[i + 1], #acks, #unknown
    local HB = '(%S+) (%S+) (%S+) (%S+) (%S+) (%S+)'
    local ok = pcall(function()
      for eid, name, inst, load, status, epoch in string.gmatch(run, HB) do
        heartbeat(eid, name, inst, load, status, epoch)
        if acks[#acks] ~= eid then acks[#acks + 1] = eid end
      end
    end)
    if not ok then
      -- again one by one (a heartbeat applied twice changes nothing), to fail only the culprit
      -- (a lease entry fails whole if one of its beats fails)
      for k = #acks, n_acks + 1, -1 do acks[k] = nil end
      for k = #unknown, n_unknown + 1, -1 do unknown[k] = nil end
      local bad = {}
      for eid, name, inst, load, status, epoch in string.gmatch(run, HB) do
        if not bad[eid] and not try(eid, heartbeat, eid, name, inst, load, status, epoch) then
          bad[eid] = true
        end
      end
      for eid in string.gmatch(run, '(%S+) %S+ %S+ %S+ %S+ %S+') do
        if not bad[eid] and acks[#acks] ~= eid then acks[#acks + 1] = eid end
      end
    end
    i = i + 2
  elseif kind == 'a' then
    local ci = i + 11
    local ti = ci + 1 + tonumber(ARGV[ci])
    local hi = ti + 1 + tonumber(ARGV[ti])
    try(ARGV[i + 1], announce, i + 1, ci, ti, hi)
    i = hi + 1
  elseif kind == 'r' then
    if try(ARGV[i + 1], renew, ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5],
        ARGV[i + 6]) and acks[#acks] ~= ARGV[i + 1] then
      acks[#acks + 1] = ARGV[i + 1]
    end
    i = i + 7
  elseif kind == 'l' then
    try(ARGV[i + 1], leave, ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5])
    i = i + 6
  else
    return redis.error_reply('control.lua: unknown entry kind ' .. tostring(kind))
  end
end
for a = 1, #acks, 1000 do
  redis.call('XACK', P.control, P.group, unpack(acks, a, math.min(#acks, a + 999)))
end
return { unknown, refused, removed, failed, stale_announces, deferred }
