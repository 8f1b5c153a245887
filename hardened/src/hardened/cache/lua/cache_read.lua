-- Read a cache entry and the current versions of its generation and tags, in one call.
-- KEYS: entry, lease, generation, tag...   (one hash tag: one Cluster slot)
-- ARGV: mode ('0' read only, '1' take the lease unless fresh, '2' take the lease always),
--       lease owner, lease ms
-- Reply: fresh and mode < 2: {1, payload, fresh ms left, load ms}
--        otherwise: {status (0 none, 1 fresh, 2 stale), payload or false, left, load ms,
--                    versions, lease held (1/0)}
local t = redis.call('TIME')
local ms = math.floor(tonumber(t[2]) / 1000)
local now = tonumber(t[1]) * 1000 + ms
local stamp = t[1] .. string.format('%03d', ms)
local versions = {}
for i = 3, #KEYS do
  local v = redis.call('GET', KEYS[i])
  if not v then
    -- A missing counter starts at the server time, above any value a lost one held.
    redis.call('SET', KEYS[i], stamp)
    v = stamp
  end
  versions[#versions + 1] = v
end
local current = table.concat(versions, ',')
local entry = redis.call('HMGET', KEYS[1], 'v', 'ver', 'fresh', 'load')
local status, payload, left, load = 0, false, 0, 0
if entry[1] and entry[2] == current then
  left = tonumber(entry[3]) - now
  load = tonumber(entry[4])
  payload = entry[1]
  if left > 0 then
    if ARGV[1] ~= '2' then
      return {1, payload, left, load}
    end
    status = 1
  else
    status = 2
  end
end
local held = 0
if ARGV[1] ~= '0' then
  if redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[3]) then
    held = 1
  elseif redis.call('GET', KEYS[2]) == ARGV[2] then
    held = 1
  end
end
return {status, payload, left, load, current, held}
