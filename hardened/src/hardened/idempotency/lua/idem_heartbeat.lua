-- IdempotencyBackend.heartbeat: extend the lease while the token still holds the record.
-- Twin: hardened.idempotency._store._heartbeat
-- KEYS[1] the record; ARGV[1] token, ARGV[2] lease ms. Reply 1 extended, 0 lost.
local r = redis.call('HMGET', KEYS[1], 'state', 'token', 'keep')
if r[1] ~= 'running' or r[2] ~= ARGV[1] then
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'lease_until', string.format('%d', now + lease))
redis.call('PEXPIRE', KEYS[1], string.format('%d', lease + tonumber(r[3])))
return 1
