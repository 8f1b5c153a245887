-- RefreshTokens.revoke_all: end every family of a user.
-- KEYS[1] the user's families zset (…:fams)
-- Family keys come from the zset (same hash tag, so same slot): no SCAN, no KEYS.
-- Access tokens die with their families (refresh_session.lua), so no stamp is kept.
-- Returns the number of families ended. Twin: hardened.auth.refresh._revoke_all
local base = string.sub(KEYS[1], 1, -5)
local ended = 0
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  ended = ended + redis.call('DEL', base .. 'fam:' .. id)
  redis.call('DEL', base .. 'anc:' .. id)
end
redis.call('DEL', KEYS[1])
return ended
