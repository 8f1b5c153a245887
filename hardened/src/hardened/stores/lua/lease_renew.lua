-- Leases.renew: reset the lease TTL if the caller still holds it.
-- KEYS[1] lease hash {owner, token}, KEYS[2] fence
-- ARGV[1] owner, ARGV[2] token, ARGV[3] lease ttl ms, ARGV[4] fence retention ms
-- Returns 1 when renewed, 0 when the lease is gone or held under another token.
-- Twin: hardened.stores._scripts._lease_renew
local fields = redis.call('HMGET', KEYS[1], 'owner', 'token')
if fields[1] ~= ARGV[1] or fields[2] ~= ARGV[2] then
  return 0
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
if redis.call('PEXPIRE', KEYS[2], ARGV[4]) == 0 then
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[4])
end
return 1
