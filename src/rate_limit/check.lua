-- Checks one request against a client's policies, all or nothing: either
-- every policy admits it and each counts it, or nothing is written.
-- `policy::check` in policy.rs is the same arithmetic (the memory store's).
--
-- KEYS[1]  the client's states: 24 bytes (three big-endian doubles) per
--          policy, in order; absent when idle
-- ARGV[1]  the request's cost
-- ARGV[2]  the policies: 32 bytes (four big-endian doubles) each, in order:
--          algorithm (1 GCRA, 2 fixed window, 3 sliding window), quota,
--          window (ms), burst (GCRA)
--
-- Returns one string of big-endian doubles: admitted (1 or 0), now (ms),
-- then for each policy: admitted, remaining, reset (ms), retry (ms). When
-- the request was refused, remaining and reset leave it out for every
-- policy (nothing was counted).
local call, pack, unpack_s = redis.call, struct.pack, struct.unpack
local floor, ceil, max = math.floor, math.ceil, math.max
local now = now_ms()
local cost = tonumber(ARGV[1])
local params = ARGV[2]
local n = #params / 32
local raw = call('GET', KEYS[1])
if not raw or #raw ~= 24 * n then raw = nil end

-- Policy i on state (s1, s2, s3): admitted, remaining, reset, retry,
-- remaining and reset without this request, then (when admitted) the
-- state to write and how long it must live.
local function policy(i, s1, s2, s3)
  local algo, quota, window, burst_n = unpack_s('>dddd', params, (i - 1) * 32 + 1)
  if algo == 1 then
    -- GCRA: s1 is when the state was written, s2 the backlog then (how
    -- far the theoretical arrival time ran ahead). Relative, not an
    -- absolute time, so that a tiny interval still counts exactly.
    local interval = window / quota
    local burst = burst_n * interval
    -- Up to half a ms (or half an interval) early, so that the rounding
    -- of a burst's sums never refuses within the burst.
    local tol = interval / 2
    if tol > 0.5 then tol = 0.5 end
    local backlog = max(s2 - (now - s1), 0)
    local new_backlog = backlog + interval * cost
    local over = new_backlog - burst - tol
    local uncounted = (burst + tol - backlog) / interval
    if over > 0 then
      return false, uncounted, backlog, over, uncounted, backlog
    end
    return true, -over / interval, new_backlog, 0, uncounted, backlog,
      now, new_backlog, 0, new_backlog
  end
  local start = floor(now / window) * window
  local left = start + window - now
  if algo == 2 then
    -- Fixed window: s1 is the window's start, s2 its count.
    local count = 0
    if s1 == start then count = s2 end
    if count + cost > quota then
      return false, quota - count, left, left, quota - count, left
    end
    return true, quota - count - cost, left, 0, quota - count, left,
      start, count + cost, 0, left
  end
  -- Sliding window: s1 the current window's start, s2 its count, s3 the
  -- previous window's count.
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
    return false, quota - used, left, retry, quota - used, left
  end
  return true, quota - used - cost, left, 0, quota - used, left,
    start, current + cost, previous, left + window
end

local function state(i)
  if raw then return unpack_s('>ddd', raw, (i - 1) * 24 + 1) end
  return 0, 0, 0
end

if n == 1 then
  -- One policy: no tables.
  local ok, rem, reset, retry, _, _, n1, n2, n3, ttl = policy(1, state(1))
  if ok then
    call('SET', KEYS[1], pack('>ddd', n1, n2, n3), 'PX', max(ceil(ttl), 1))
    return pack('>dddddd', 1, now, 1, max(floor(rem), 0), max(ceil(reset), 0), 0)
  end
  return pack('>dddddd', 0, now, 0, max(floor(rem), 0), max(ceil(reset), 0),
    max(ceil(retry), 1))
end

-- Several: every policy's outcome first (10 values each), then the reply.
local r, all_ok = {}, true
for i = 1, n do
  local b = (i - 1) * 10
  local s1, s2, s3 = state(i)
  r[b + 1], r[b + 2], r[b + 3], r[b + 4], r[b + 5], r[b + 6], r[b + 7], r[b + 8],
    r[b + 9], r[b + 10] = policy(i, s1, s2, s3)
  if not r[b + 1] then all_ok = false end
end
local out, states, ttl = { all_ok and 1 or 0, now }, {}, 1
for i = 1, n do
  local b = (i - 1) * 10
  local rem, reset, retry = r[b + 2], r[b + 3], 0
  if all_ok then
    states[#states + 1] = pack('>ddd', r[b + 7], r[b + 8], r[b + 9])
    ttl = max(ttl, ceil(r[b + 10]))
  else
    rem, reset = r[b + 5], r[b + 6]
  end
  if not r[b + 1] then retry = max(ceil(r[b + 4]), 1) end
  out[#out + 1] = r[b + 1] and 1 or 0
  out[#out + 1] = max(floor(rem), 0)
  out[#out + 1] = max(ceil(reset), 0)
  out[#out + 1] = retry
end
if all_ok then
  call('SET', KEYS[1], table.concat(states), 'PX', ttl)
end
return pack('>' .. string.rep('d', #out), unpack(out))
