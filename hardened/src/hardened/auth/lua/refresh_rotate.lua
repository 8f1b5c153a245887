-- RefreshTokens.rotate: rotate, absorb a concurrent refresh, or detect reuse, in one step.
-- KEYS[1] family hash, KEYS[2] ancestors list, KEYS[3] reuse tombstone, KEYS[4] families zset
-- ARGV[1] keyed hash of the presented secret, ARGV[2] keyed hash of its (deterministic) child,
-- ARGV[3] grace ms, ARGV[4] family ttl ms, ARGV[5] ancestors kept, ARGV[6] family id
-- Returns {outcome, tenant}: 1 rotated (the child is now current), 2 grace (the presented
-- token is the parent, rotated at most grace ms ago: its child is already current),
-- 3 reuse (a superseded token: family deleted, tombstone set), 4 a member of a family
-- already revoked for reuse, 0 invalid (unknown, forged or expired: nothing changes).
-- Twin: hardened.auth.refresh._rotate
local fam = redis.call('HMGET', KEYS[1], 'current', 'parent', 'rotated_at', 'tenant')
local current, parent = fam[1], fam[2]
if not current then
  if redis.call('EXISTS', KEYS[3]) == 1 then
    return {4, false}
  end
  return {0, false}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local presented, ttl = ARGV[1], tonumber(ARGV[4])
if presented == current then
  local stamp = string.format('%d', now)
  redis.call('HSET', KEYS[1], 'current', ARGV[2], 'parent', presented,
    'rotated_at', stamp, 'last_used_at', stamp)
  redis.call('PEXPIRE', KEYS[1], ttl)
  if parent then
    redis.call('LPUSH', KEYS[2], parent)
    redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[5]) - 1)
    redis.call('PEXPIRE', KEYS[2], ttl)
  end
  if redis.call('PTTL', KEYS[4]) < ttl then
    redis.call('PEXPIRE', KEYS[4], ttl)
  end
  return {1, fam[4]}
end
local grace = tonumber(ARGV[3])
if presented == parent and grace > 0 and now - tonumber(fam[3]) <= grace then
  return {2, fam[4]}
end
if presented == parent or redis.call('LPOS', KEYS[2], presented) then
  redis.call('DEL', KEYS[1], KEYS[2])
  redis.call('ZREM', KEYS[4], ARGV[6])
  redis.call('SET', KEYS[3], '1', 'PX', ttl)
  return {3, fam[4]}
end
return {0, false}
