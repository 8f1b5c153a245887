-- Reserve the next slot of a dependency's interval cap (GCRA with reservation), atomically.
-- Twin: hardened.outbound._scripts._reserve (same integer microsecond arithmetic).
-- KEYS[1]: the cap's theoretical arrival time (TAT), server microseconds as a decimal string.
-- ARGV: emission interval I, burst tolerance tau (burst * I), longest wait; all microseconds.
-- Reply: admitted {1, wait, start}: the slot starts at `start`, `wait` after now;
--        refused  {0, retry, now}: no slot within the longest wait for another `retry`;
--        a refusal writes nothing. Times in microseconds on the server clock (TIME).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval, tau, longest = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local start = tat - tau
if start < now then start = now end
local wait = start - now
if wait > longest then
  return {0, wait - longest, now}
end
local new = tat + interval
-- Kept until just past the new TAT: an idle cap leaves nothing behind, and a missing key
-- means exactly what an expired TAT means (a TAT in the past counts as now).
redis.call('SET', KEYS[1], string.format('%d', new),
  'PX', string.format('%d', math.floor((new - now + 999) / 1000) + 1))
return {1, wait, start}
