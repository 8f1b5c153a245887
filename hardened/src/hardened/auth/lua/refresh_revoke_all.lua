-- RefreshTokens.revoke_all: end every family of a user and stamp not-before.
-- KEYS[1] the user's families zset (…:fams), KEYS[2] not-before string (…:nbf)
-- ARGV[1] not-before ttl ms (kept if an earlier stamp outlives it)
-- Family keys come from the zset (same hash tag, so same slot): no SCAN, no KEYS.
-- Returns {stamp "seconds.micros" (server time), families ended}.
-- Twin: hardened.auth.refresh._revoke_all
local base = string.sub(KEYS[1], 1, -5)
local ended = 0
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  ended = ended + redis.call('DEL', base .. 'fam:' .. id)
  redis.call('DEL', base .. 'anc:' .. id)
end
redis.call('DEL', KEYS[1])
local t = redis.call('TIME')
local stamp = string.format('%d.%06d', tonumber(t[1]), tonumber(t[2]))
local ttl = math.max(tonumber(ARGV[1]), redis.call('PTTL', KEYS[2]))
redis.call('SET', KEYS[2], stamp, 'PX', ttl)
return {stamp, ended}
