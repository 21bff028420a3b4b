-- lessees (acl mode): the host that may renew each name by its lease (coordinator/authn.py).
-- KEYS: the record hashes R:agent:<name> of the names a batch's leases beat for
-- Returns each record's field 'lessee', in KEYS order (nil where none: no record, or written
-- before acl mode). One command for a lease of up to 1,000 names: as many pipelined HGETs cost
-- Redis and the coordinator a command each.
local out = {}
for i, key in ipairs(KEYS) do out[i] = redis.call('HGET', key, 'lessee') end
return out
