-- get: one record and its deadline, in one round trip (a name under a host's lease has none
-- of its own: its lease's is read through the record's `lease` field).
-- KEYS[1] R:agent:<name>  KEYS[2] R:deadlines  KEYS[3] R:leases (one slot)  ARGV[1] the name
-- Returns { the record's HGETALL (empty: none), its deadline (ms) or false }.
local h = redis.call('HGETALL', KEYS[1])
if #h == 0 then return { h, false } end
local d = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not d then
  local lease = redis.call('HGET', KEYS[1], 'lease')
  if lease then d = redis.call('ZSCORE', KEYS[3], lease) end
end
return { h, d }
