-- Leases.release: free the lease if the caller still holds it.
-- KEYS[1] lease hash {owner, token}, KEYS[2] fence (kept: it expires on its own)
-- ARGV[1] owner, ARGV[2] token
-- Returns 1 when released, 0 when the lease is gone or held under another token.
-- Twin: hardened.stores._scripts._lease_release
local fields = redis.call('HMGET', KEYS[1], 'owner', 'token')
if fields[1] ~= ARGV[1] or fields[2] ~= ARGV[2] then
  return 0
end
redis.call('DEL', KEYS[1])
return 1
