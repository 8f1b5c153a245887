-- IdempotencyBackend.complete: store the result for the retention and end the lease.
-- Twin: hardened.idempotency._store._complete
-- KEYS[1] the record; ARGV[1] token, ARGV[2] result, ARGV[3] retention ms.
-- Reply 1 stored, 0 lost. The fingerprint stays, so a reuse with another payload
-- is still refused while the result is kept.
local r = redis.call('HMGET', KEYS[1], 'state', 'token')
if r[1] ~= 'running' or r[2] ~= ARGV[1] then
  return 0
end
redis.call('HDEL', KEYS[1], 'token', 'lease_until', 'keep', 'phase', 'data')
redis.call('HSET', KEYS[1], 'state', 'done', 'result', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
