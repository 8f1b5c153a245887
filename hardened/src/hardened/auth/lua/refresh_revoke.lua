-- RefreshTokens.revoke: end one family (a logout).
-- KEYS[1] family hash, KEYS[2] ancestors list, KEYS[3] the user's families zset
-- ARGV[1] family id
-- Returns 1 if the family was live, else 0. Twin: hardened.auth.refresh._revoke
local live = redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
return live
