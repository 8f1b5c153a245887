-- Store a loaded value only if the versions it was loaded under are still current.
-- KEYS: entry, lease, generation, tag...
-- ARGV: versions at load start, payload, fresh ms, keep ms (fresh + grace), load ms,
--       lease owner ('' for none)
-- Reply: 1 stored, 0 refused (an invalidation ran during the load). The lease is freed
-- either way if ARGV[6] still holds it (compare-and-delete).
if ARGV[6] ~= '' and redis.call('GET', KEYS[2]) == ARGV[6] then
  redis.call('DEL', KEYS[2])
end
local versions = {}
for i = 3, #KEYS do
  local v = redis.call('GET', KEYS[i])
  if not v then
    return 0
  end
  versions[#versions + 1] = v
end
if table.concat(versions, ',') ~= ARGV[1] then
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], 'v', ARGV[2], 'ver', ARGV[1],
  'fresh', string.format('%d', now + tonumber(ARGV[3])), 'load', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
