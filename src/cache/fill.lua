-- Writes a cache entry for the holder of a fill lease, and gives the lease
-- up: an invalidation removes the URL's lease with its entry, so a fill
-- that asked the handler before a write's invalidation finds its lease
-- gone and is not stored (its response may predate the write).
--
-- A URL's variants (responses that name fields in Vary) each have a key
-- of their own, and a lease of their own, which an invalidation cannot
-- name; it stamps the URL instead, and a fill under a variant's lease
-- that began before the stamp is not stored. The URL's key holds a
-- pointer: the names, then a nonce of 40 hex digits made when the pointer
-- is; each variant's value begins with its pointer's nonce, and is used
-- only while that pointer is there (see the store's lookup). Places: a
-- sorted set records each variant with the end of its place (its expiry
-- plus as long again, so a variant fetched again soon after it expired
-- keeps it); a URL holds at most ARGV[7], and a new variant finds room
-- only where a place ended, so made-up values of a varied field cannot
-- push out the variants stored before them.
--
-- KEYS[1]  the entry (the URL's, or a variant's)
-- KEYS[2]  the lease the fill holds (the URL's, or a variant's)
-- KEYS[3]  the URL's key (KEYS[1] when not a variant): the pointer's place
-- KEYS[4]  the URL's places (sorted set: variant id -> end, Unix ms)
-- KEYS[5]  when the URL was last invalidated (Unix ms)
-- ARGV[1]  the fill's holder token
-- ARGV[2]  the entry's bytes
-- ARGV[3]  'PX' (ARGV[4] is a time to live, ms) or 'PXAT' (ARGV[4] is a
--          Unix time, ms)
-- ARGV[4]  the expiry, as ARGV[3] says
-- ARGV[5]  the pointer's names; empty when the entry is not a variant
-- ARGV[6]  the variant's id (32 hex digits), or empty
-- ARGV[7]  the most places a URL holds
-- ARGV[8]  what the URL's variant keys begin with (they share KEYS[3]'s
--          hash tag)
-- ARGV[9]  when the fill began (Unix ms, the filling instance's clock)
-- ARGV[10] how far clocks may differ, ms: a fill under a variant's lease
--          that began up to that long after an invalidation counts as
--          older than it
-- ARGV[11] '1' when KEYS[2] is a variant's lease, else '0'
--
-- Returns 1 when written, 0 when the lease is not (or no longer) the
-- holder's or the URL was invalidated since the fill began (a variant's
-- fill under its own lease was leased when the URL held a pointer: with
-- none there now, or another list of names, it was invalidated or
-- replaced), -1 when
-- the URL holds as many places as it may (nothing written; the lease
-- stays).
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return 0
end
if ARGV[11] == '1' then
  local stamp = redis.call('GET', KEYS[5])
  if stamp and (tonumber(stamp) or math.huge) + tonumber(ARGV[10]) >= tonumber(ARGV[9]) then
    return 0
  end
end
-- Every variant recorded, and the record.
local function clear()
  for _, id in ipairs(redis.call('ZRANGE', KEYS[4], 0, -1)) do
    redis.call('DEL', ARGV[8] .. id)
  end
  redis.call('DEL', KEYS[4])
end
local pointer = redis.call('GET', KEYS[3])
if ARGV[5] == '' then
  if KEYS[1] == KEYS[3] and redis.call('EXISTS', KEYS[4]) == 1 then
    clear()
  end
  redis.call('SET', KEYS[1], ARGV[2], ARGV[3], ARGV[4])
  redis.call('DEL', KEYS[2])
  return 1
end
local now = now_ms()
local expires = tonumber(ARGV[4])
if ARGV[3] == 'PX' then
  expires = now + expires
end
local names = #ARGV[5]
local nonce
if pointer and #pointer == names + 40 and string.sub(pointer, 1, names) == ARGV[5] then
  nonce = string.sub(pointer, names + 1)
elseif ARGV[11] == '1' then
  return 0
else
  -- No pointer, another list of names, or an entry of the URL's own:
  -- what was stored before goes, and a new pointer begins.
  clear()
  nonce = redis.sha1hex(ARGV[1] .. ':' .. now)
end
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', string.format('%d', now))
if not redis.call('ZSCORE', KEYS[4], ARGV[6])
    and redis.call('ZCARD', KEYS[4]) >= tonumber(ARGV[7]) then
  return -1
end
redis.call('SET', KEYS[1], nonce .. ARGV[2], 'PXAT', string.format('%d', expires))
redis.call('ZADD', KEYS[4], 'GT', string.format('%d', expires + (expires - now)), ARGV[6])
local last = string.format('%d', tonumber(redis.call('ZRANGE', KEYS[4], -1, -1, 'WITHSCORES')[2]))
redis.call('SET', KEYS[3], ARGV[5] .. nonce, 'PXAT', last)
redis.call('PEXPIREAT', KEYS[4], last)
redis.call('DEL', KEYS[2])
return 1
