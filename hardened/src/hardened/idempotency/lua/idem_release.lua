-- IdempotencyBackend.release: end the lease now so a retry may run.
-- Twin: hardened.idempotency._store._release
-- KEYS[1] the record; ARGV[1] token. Reply 1 released, 0 lost.
-- Without a checkpoint the record is forgotten (the retry starts afresh); with
-- one, the lease lapses now and the token moves on (the releaser is fenced
-- off), keeping the checkpoint for the retention, so the retry resumes there.
local r = redis.call('HMGET', KEYS[1], 'state', 'token', 'keep', 'phase')
if r[1] ~= 'running' or r[2] ~= ARGV[1] then
  return 0
end
if not r[4] then
  redis.call('DEL', KEYS[1])
  return 1
end
redis.call('HSET', KEYS[1], 'token', string.format('%d', tonumber(r[2]) + 1), 'lease_until', '0')
redis.call('PEXPIRE', KEYS[1], r[3])
return 1
