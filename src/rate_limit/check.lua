-- Checks one request against the policies of one or more keys (one per
-- rule that applies), all or nothing: either every policy of every gating
-- key admits it and each key counts it, or nothing is written. A dry-run
-- key never refuses the request for the others; it counts it only when
-- its own policies admit it too. `policy::check` in policy.rs is the same
-- arithmetic (the memory store's); `memory.rs` the same all or nothing.
--
-- KEYS[j]      key j's states: 24 bytes (three big-endian doubles) per
--              policy, in order; absent when idle
-- ARGV[2j-1]   the request's cost under key j
-- ARGV[2j]     key j's policies: 32 bytes (four big-endian doubles) each,
--              in order: algorithm (1 GCRA, 2 fixed window, 3 sliding
--              window), quota, window (ms), burst (GCRA)
-- ARGV[2k+1]   (optional, k keys) one byte per key: '1' when it gates the
--              request, '0' for a dry run; every key gates when absent
--
-- Returns one string of big-endian doubles: admitted (1 or 0: every
-- gating key admitted), now (ms), then for each key's policies in order:
-- admitted, remaining, reset (ms), retry (ms). For a key that did not
-- count the request, remaining and reset leave it out.
local call, pack, unpack_s = redis.call, struct.pack, struct.unpack
local floor, ceil, max = math.floor, math.ceil, math.max
local now = now_ms()
local k = #KEYS
local gates = ARGV[2 * k + 1]

-- Policy i of `params` for a request of `cost` on state (s1, s2, s3):
-- admitted, remaining, reset, retry, remaining and reset without this
-- request, then (when admitted) the state to write and how long it must
-- live.
local function policy(params, i, cost, s1, s2, s3)
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

-- The states of key j: a reader of policy i's three numbers (zeros when
-- the key is absent or not of the shape of its n policies).
local function states(j, n)
  local raw = call('GET', KEYS[j])
  if raw and #raw == 24 * n then
    return function(i) return unpack_s('>ddd', raw, (i - 1) * 24 + 1) end
  end
  return function() return 0, 0, 0 end
end

if k == 1 and #ARGV[2] == 32 then
  -- One key, one policy (the common case): no tables, no closure.
  local raw, s1, s2, s3 = call('GET', KEYS[1]), 0, 0, 0
  if raw and #raw == 24 then s1, s2, s3 = unpack_s('>ddd', raw) end
  local ok, rem, reset, retry, _, _, n1, n2, n3, ttl =
    policy(ARGV[2], 1, tonumber(ARGV[1]), s1, s2, s3)
  if ok then
    call('SET', KEYS[1], pack('>ddd', n1, n2, n3), 'PX', max(ceil(ttl), 1))
    return pack('>dddddd', 1, now, 1, max(floor(rem), 0), max(ceil(reset), 0), 0)
  end
  -- Refused: the request too, unless this key is a dry run ('0'), which
  -- never refuses it for the keys checked after it (on a cluster, in
  -- calls of their own).
  return pack('>dddddd', ARGV[3] == '0' and 1 or 0, now, 0, max(floor(rem), 0),
    max(ceil(reset), 0), max(ceil(retry), 1))
end

-- Every policy's outcome first (10 values each), then the writes and the
-- reply.
local r, counts, oks, all_ok, b = {}, {}, {}, true, 0
for j = 1, k do
  local cost, params = tonumber(ARGV[2 * j - 1]), ARGV[2 * j]
  local n = #params / 32
  local state, ok = states(j, n), true
  for i = 1, n do
    r[b + 1], r[b + 2], r[b + 3], r[b + 4], r[b + 5], r[b + 6], r[b + 7], r[b + 8],
      r[b + 9], r[b + 10] = policy(params, i, cost, state(i))
    if not r[b + 1] then ok = false end
    b = b + 10
  end
  counts[j], oks[j] = n, ok
  if not ok and (not gates or gates:byte(j) == 49) then all_ok = false end
end
local out = { pack('>dd', all_ok and 1 or 0, now) }
b = 0
for j = 1, k do
  local counted, written, ttl = all_ok and oks[j], {}, 1
  for _ = 1, counts[j] do
    local rem, reset, retry = r[b + 2], r[b + 3], 0
    if counted then
      written[#written + 1] = pack('>ddd', r[b + 7], r[b + 8], r[b + 9])
      ttl = max(ttl, ceil(r[b + 10]))
    else
      rem, reset = r[b + 5], r[b + 6]
    end
    if not r[b + 1] then retry = max(ceil(r[b + 4]), 1) end
    out[#out + 1] = pack('>dddd', r[b + 1] and 1 or 0, max(floor(rem), 0),
      max(ceil(reset), 0), retry)
    b = b + 10
  end
  if counted then
    call('SET', KEYS[j], table.concat(written), 'PX', ttl)
  end
end
return table.concat(out)
