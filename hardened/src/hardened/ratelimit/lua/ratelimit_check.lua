-- Check every hit of one request atomically; consume only if every enforced policy allows.
-- Twin: hardened.ratelimit._core._check (same integer microsecond arithmetic).
-- KEYS[i]: the counter of hit i (a GCRA TAT string, or a sliding-window hash {w, c, p}).
-- ARGV[1]: cost; then 5 per hit: algorithm (1 gcra, 2 sliding window), shadow (0/1), limit,
--   a, b: gcra a = emission interval, b = burst capacity (burst * a); window a = period, b = 0.
-- Reply: {now, all_allowed, then per hit: allowed, remaining, reset, retry}; times in us.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cost = tonumber(ARGV[1])
local all = 1
local res, writes = {}, {}
for i = 1, #KEYS do
  local j = 1 + (i - 1) * 5
  local shadow = ARGV[j + 2] == '1'
  local limit, a, b = tonumber(ARGV[j + 3]), tonumber(ARGV[j + 4]), tonumber(ARGV[j + 5])
  local ok, retry, rem_before, reset_before, rem_after, reset_after
  if ARGV[j + 1] == '1' then
    local tat = tonumber(redis.call('GET', KEYS[i]) or now)
    if tat < now then tat = now end
    local new_tat = tat + cost * a
    local diff = now - (new_tat - b)
    rem_before = math.floor((now - (tat - b)) / a)
    if rem_before < 0 then rem_before = 0 end
    reset_before = tat - now
    if diff >= 0 then
      ok, retry = 1, 0
      rem_after, reset_after = math.floor(diff / a), new_tat - now
      writes[i] = {new_tat}
    else
      ok, retry = 0, -diff
    end
  else
    local w = math.floor(now / a)
    local e = now - w * a
    if e < 0 then w, e = w - 1, e + a elseif e >= a then w, e = w + 1, e - a end
    local h = redis.call('HMGET', KEYS[i], 'w', 'c', 'p')
    local hw, cur, prev = tonumber(h[1]), 0, 0
    if hw == w then
      cur, prev = tonumber(h[2]) or 0, tonumber(h[3]) or 0
    elseif hw == w - 1 then
      prev = tonumber(h[2]) or 0
    end
    local weighted = math.floor(prev * (a - e) / a) + cur
    rem_before = limit - weighted
    if rem_before < 0 then rem_before = 0 end
    reset_before = 0
    if cur > 0 then reset_before = 2 * a - e elseif prev > 0 then reset_before = a - e end
    if weighted + cost <= limit then
      ok, retry = 1, 0
      rem_after, reset_after = limit - weighted - cost, 2 * a - e
      writes[i] = {w, cur + cost, prev, 2 * a - e}
    else
      ok = 0
      local room = limit - cost - cur
      if room >= 0 then
        retry = a - math.floor(((room + 1) * a - 1) / prev) - e
      elseif cost <= limit then
        local e2 = 0
        if cur > 0 then
          e2 = a - math.floor(((limit - cost + 1) * a - 1) / cur)
          if e2 < 0 then e2 = 0 end
        end
        retry = a - e + e2
      else
        retry = a
      end
    end
  end
  if ok == 0 and not shadow then all = 0 end
  res[i] = {ok, retry, rem_before, reset_before, rem_after, reset_after}
end
local out = {now, all}
for i = 1, #KEYS do
  local r, wr = res[i], writes[i]
  if all == 1 and wr then
    if #wr == 1 then
      redis.call('SET', KEYS[i], string.format('%d', wr[1]),
        'PX', string.format('%d', math.floor((wr[1] - now + 999) / 1000)))
    else
      redis.call('HSET', KEYS[i], 'w', string.format('%d', wr[1]),
        'c', string.format('%d', wr[2]), 'p', string.format('%d', wr[3]))
      redis.call('PEXPIRE', KEYS[i], string.format('%d', math.floor((wr[4] + 999) / 1000)))
    end
    r[3], r[4] = r[5], r[6]
  end
  local k = 2 + (i - 1) * 4
  out[k + 1], out[k + 2], out[k + 3], out[k + 4] = r[1], r[3], r[4], r[2]
end
return out
