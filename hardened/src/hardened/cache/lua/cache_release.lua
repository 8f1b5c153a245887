-- Free a load lease if ARGV[1] still holds it; or, with ARGV[2] > 0 (the load failed),
-- hand it to nobody for ARGV[2] ms, so a failing source is tried once per that interval
-- per key, by every process, this one included.
-- KEYS: lease
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
if tonumber(ARGV[2]) > 0 then
  redis.call('SET', KEYS[1], 'failed', 'PX', ARGV[2])
else
  redis.call('DEL', KEYS[1])
end
return 1
