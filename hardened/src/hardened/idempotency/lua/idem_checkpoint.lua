-- IdempotencyBackend.checkpoint: record a completed phase (recovery point) under the token.
-- Twin: hardened.idempotency._store._checkpoint
-- KEYS[1] the record; ARGV[1] token, ARGV[2] phase, ARGV[3] data. Reply 1 recorded, 0 lost.
local r = redis.call('HMGET', KEYS[1], 'state', 'token')
if r[1] ~= 'running' or r[2] ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'phase', ARGV[2], 'data', ARGV[3])
return 1
