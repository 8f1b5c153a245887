-- RefreshTokens.start: open a family, index it, evict the oldest beyond the cap.
-- KEYS[1] the user's families zset (…:fams), KEYS[2] the new family hash (…:fam:<id>)
-- ARGV[1] family id, ARGV[2] keyed hash of the first secret, ARGV[3] tenant,
-- ARGV[4] meta (JSON), ARGV[5] family ttl ms, ARGV[6] max families
-- Other families' keys are built from KEYS[1] (same hash tag, so same slot):
-- members whose hash has expired are dropped first, so only live families count.
-- Scores are creation ms, bumped past the newest so insertion order is strict.
-- Returns {created_at ms, evicted family id, …}. Twin: hardened.auth.refresh._start
local base = string.sub(KEYS[1], 1, -5)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if redis.call('EXISTS', base .. 'fam:' .. id) == 0 then
    redis.call('ZREM', KEYS[1], id)
    redis.call('DEL', base .. 'anc:' .. id)
  end
end
local score = now
local newest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if newest[2] and tonumber(newest[2]) >= now then
  score = tonumber(newest[2]) + 1
end
local stamp = string.format('%d', now)
local ttl = tonumber(ARGV[5])
redis.call('HSET', KEYS[2], 'current', ARGV[2], 'rotated_at', stamp, 'created_at', stamp,
  'last_used_at', stamp, 'tenant', ARGV[3], 'meta', ARGV[4])
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('ZADD', KEYS[1], string.format('%d', score), ARGV[1])
local reply = {now}
local over = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[6])
if over > 0 then
  local popped = redis.call('ZPOPMIN', KEYS[1], over)
  for i = 1, #popped, 2 do
    redis.call('DEL', base .. 'fam:' .. popped[i], base .. 'anc:' .. popped[i])
    reply[#reply + 1] = popped[i]
  end
end
if redis.call('PTTL', KEYS[1]) < ttl then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return reply
