-- IdempotencyBackend.claim: take the key or say why not, in one step.
-- Twin: hardened.idempotency._store._claim
-- KEYS[1] the record, a hash {fingerprint, state, token, lease_until, keep, phase, data, result}
-- ARGV[1] fingerprint, ARGV[2] lease ms, ARGV[3] retention ms
-- Reply: {1, token, phase, data} claimed (phase, data nil unless resuming a checkpoint);
--   {2, ms left on the lease} in flight; {3, result} completed; {4} another fingerprint.
-- The lease is judged on the server clock (TIME), not the key's TTL, so a lapsed
-- lease still holds its checkpoint for whoever takes over. Tokens are
-- max(last + 1, now in ms): a record forgotten and made again never reissues
-- the token of a holder whose lease was taken over (it is a lease older).
local r = redis.call('HMGET', KEYS[1], 'fingerprint', 'state', 'token', 'lease_until', 'phase', 'data', 'result')
if r[1] and r[1] ~= ARGV[1] then
  return {4}
end
if r[2] == 'done' then
  return {3, r[7]}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease, keep = tonumber(ARGV[2]), tonumber(ARGV[3])
local token = now
if r[1] then
  local left = tonumber(r[4]) - now
  if left > 0 then
    return {2, left}
  end
  token = math.max(tonumber(r[3]) + 1, now)
end
redis.call('HSET', KEYS[1], 'fingerprint', ARGV[1], 'state', 'running',
  'token', string.format('%d', token), 'lease_until', string.format('%d', now + lease),
  'keep', ARGV[3])
redis.call('PEXPIRE', KEYS[1], string.format('%d', lease + keep))
return {1, token, r[5], r[6]}
