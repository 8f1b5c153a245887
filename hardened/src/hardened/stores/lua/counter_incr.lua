-- Counters.incr with a TTL applied only when the counter is created.
-- KEYS[1] counter
-- ARGV[1] amount (integer), ARGV[2] ttl in milliseconds
-- Returns the new value. Twin: hardened.stores._scripts._counter_incr
local created = redis.call('EXISTS', KEYS[1]) == 0
local value = redis.call('INCRBY', KEYS[1], ARGV[1])
if created then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return value
