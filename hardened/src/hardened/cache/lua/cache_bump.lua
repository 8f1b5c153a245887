-- Invalidate a tag or a generation: one INCR. A counter that was missing starts at the
-- server time, so a lost counter can never come back at a value an entry recorded.
-- KEYS: counter
local v = redis.call('INCR', KEYS[1])
if v == 1 then
  local t = redis.call('TIME')
  local stamp = t[1] .. string.format('%03d', math.floor(tonumber(t[2]) / 1000))
  redis.call('SET', KEYS[1], stamp)
  return tonumber(stamp)
end
return v
