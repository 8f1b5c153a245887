-- Leases.acquire: take the lease unless another owner holds it.
-- KEYS[1] lease hash {owner, token}, KEYS[2] fence (last token issued)
-- ARGV[1] owner, ARGV[2] lease ttl ms, ARGV[3] fence retention ms (>= ttl)
-- Returns the new fencing token, or nil when another owner holds the lease.
-- Token = max(last + 1, server time in ms): strictly increasing while the
-- fence lives, and still above every earlier token after it has expired.
-- Twin: hardened.stores._scripts._lease_acquire
local holder = redis.call('HGET', KEYS[1], 'owner')
if holder and holder ~= ARGV[1] then
  return nil
end
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
local token = string.format('%d', math.max(last + 1, now_ms))
redis.call('SET', KEYS[2], token, 'PX', ARGV[3])
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'token', token)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return tonumber(token)
