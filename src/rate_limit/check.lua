-- Checks one request against a client's policies, all or nothing: either
-- every policy admits it and each counts it, or nothing is written.
-- `policy::check` in policy.rs is the same arithmetic (the memory store's).
--
-- KEYS[i]  the client's state for policy i (all keys share one hash tag);
--          a string of three big-endian doubles, absent when idle
-- ARGV[1]  the request's cost
-- ARGV[2 + 4(i - 1) ..]  for policy i: algorithm (1 GCRA, 2 fixed window,
--          3 sliding window), quota, window (ms), burst (GCRA)
--
-- Returns one string of big-endian doubles: admitted (1 or 0), now (ms),
-- then for each policy: admitted, remaining, reset (ms), retry (ms). When
-- the request was refused, remaining and reset leave it out for every
-- policy (nothing was counted).
local now = now_ms()
local cost = tonumber(ARGV[1])
local all_ok = true
local results = {}

for i = 1, #KEYS do
  local a = 2 + (i - 1) * 4
  local algo = tonumber(ARGV[a])
  local quota = tonumber(ARGV[a + 1])
  local window = tonumber(ARGV[a + 2])
  local s1, s2, s3 = 0, 0, 0
  local raw = redis.call('GET', KEYS[i])
  if raw and #raw == 24 then
    s1, s2, s3 = struct.unpack('>ddd', raw)
  end
  -- r: { admitted, remaining, reset, retry, remaining and reset without
  -- this request, the state to write, its ttl }
  local r
  if algo == 1 then
    -- GCRA: s1 is the theoretical arrival time.
    local interval = window / quota
    local burst = tonumber(ARGV[a + 3]) * interval
    local tat = math.max(s1, now)
    local new_tat = tat + interval * cost
    local allow_at = new_tat - burst
    local uncounted = (now + burst - tat) / interval
    if now < allow_at then
      r = { false, uncounted, tat - now, allow_at - now, uncounted, tat - now }
    else
      r = { true, (now - allow_at) / interval, new_tat - now, 0, uncounted, tat - now,
            new_tat, 0, 0, new_tat - now }
    end
  else
    local start = math.floor(now / window) * window
    local left = start + window - now
    if algo == 2 then
      -- Fixed window: s1 is the window's start, s2 its count.
      local count = 0
      if s1 == start then count = s2 end
      if count + cost > quota then
        r = { false, quota - count, left, left, quota - count, left }
      else
        r = { true, quota - count - cost, left, 0, quota - count, left,
              start, count + cost, 0, left }
      end
    else
      -- Sliding window: s1 the current window's start, s2 its count, s3
      -- the previous window's count.
      local current, previous = 0, 0
      if s1 == start then
        current, previous = s2, s3
      elseif s1 == start - window then
        previous = s2
      end
      local used = previous * left / window + current
      if used + cost > quota then
        local retry = left
        if current + cost <= quota then
          -- In this window, once the previous one weighs little enough.
          retry = start + window - (quota - current - cost) / previous * window - now
        elseif cost <= quota and current > 0 then
          -- In the next window, once this one weighs little enough.
          retry = start + 2 * window - (quota - cost) / current * window - now
        end
        r = { false, quota - used, left, retry, quota - used, left }
      else
        r = { true, quota - used - cost, left, 0, quota - used, left,
              start, current + cost, previous, left + window }
      end
    end
  end
  if not r[1] then all_ok = false end
  results[i] = r
end

local out = { all_ok and 1 or 0, now }
for i, r in ipairs(results) do
  local remaining, reset, retry = r[2], r[3], 0
  if not all_ok then remaining, reset = r[5], r[6] end
  if not r[1] then retry = math.max(math.ceil(r[4]), 1) end
  out[#out + 1] = r[1] and 1 or 0
  out[#out + 1] = math.max(math.floor(remaining), 0)
  out[#out + 1] = math.max(math.ceil(reset), 0)
  out[#out + 1] = retry
  if all_ok then
    redis.call('SET', KEYS[i], struct.pack('>ddd', r[7], r[8], r[9]), 'PX',
      math.max(math.ceil(r[10]), 1))
  end
end
return struct.pack('>' .. string.rep('d', #out), unpack(out))
