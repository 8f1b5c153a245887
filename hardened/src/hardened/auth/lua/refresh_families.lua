-- RefreshTokens.families: the user's live families, oldest first (read only).
-- KEYS[1] the user's families zset (…:fams); family hashes are built from it (same slot).
-- Returns {{id, created_at ms, last_used_at ms, expires_at ms, tenant, meta}, …}.
-- Twin: hardened.auth.refresh._families
local base = string.sub(KEYS[1], 1, -5)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local reply = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local key = base .. 'fam:' .. id
  local f = redis.call('HMGET', key, 'created_at', 'last_used_at', 'tenant', 'meta')
  local left = redis.call('PTTL', key)
  if f[1] and left > 0 then
    reply[#reply + 1] = {id, tonumber(f[1]), tonumber(f[2]), now + left, f[3], f[4]}
  end
end
return reply
