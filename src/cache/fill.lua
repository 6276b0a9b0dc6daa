-- Writes a cache entry for the holder of its fill lease, and gives the
-- lease up: an invalidation removes the lease with the entry, so a fill
-- that asked the handler before a write's invalidation finds its lease
-- gone and is not stored (its response may predate the write).
--
-- A URL's variants (responses that name fields in Vary) each have a key
-- of their own; the URL's key then holds a pointer (the names), and a
-- sorted set records each variant with the end of its place: its expiry
-- plus as long again, so a variant fetched again soon after it expired
-- keeps its place. A URL holds at most ARGV[7] places; a new variant
-- finds room only where a place ended, so made-up values of a varied
-- field cannot push out the variants stored before them.
--
-- KEYS[1]  the entry (the URL's, or a variant's)
-- KEYS[2]  the URL's fill lease
-- KEYS[3]  the URL's key (KEYS[1] when not a variant): the pointer's place
-- KEYS[4]  the URL's sorted set of variants (member: variant id; score:
--          end of its place, Unix ms)
-- ARGV[1]  the fill's holder token
-- ARGV[2]  the entry's bytes
-- ARGV[3]  'PX' (ARGV[4] is a time to live, ms) or 'PXAT' (ARGV[4] is a
--          Unix time, ms)
-- ARGV[4]  the expiry, as ARGV[3] says
-- ARGV[5]  the pointer's bytes; empty when the entry is not a variant
-- ARGV[6]  the variant's id (32 hex digits), or empty
-- ARGV[7]  the most places a URL holds
-- ARGV[8]  what the URL's variant keys begin with (KEYS[3] with 'v' in
--          place of its final 'e'); they share KEYS[3]'s hash tag
--
-- Returns 1 when written, 0 when the lease is not (or no longer) the
-- holder's, -1 when the URL holds as many places as it may (nothing
-- written either way; the lease stays).
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return 0
end
-- Every variant recorded, and the record: stored under an earlier Vary.
local function clear()
  for _, id in ipairs(redis.call('ZRANGE', KEYS[4], 0, -1)) do
    redis.call('DEL', ARGV[8] .. id)
  end
  redis.call('DEL', KEYS[4])
end
if ARGV[5] == '' then
  if KEYS[1] == KEYS[3] and redis.call('EXISTS', KEYS[4]) == 1 then
    clear()
  end
  redis.call('SET', KEYS[1], ARGV[2], ARGV[3], ARGV[4])
  redis.call('DEL', KEYS[2])
  return 1
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expires = tonumber(ARGV[4])
if ARGV[3] == 'PX' then
  expires = now + expires
end
if redis.call('GET', KEYS[3]) ~= ARGV[5] then
  clear()
end
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
if not redis.call('ZSCORE', KEYS[4], ARGV[6])
    and redis.call('ZCARD', KEYS[4]) >= tonumber(ARGV[7]) then
  return -1
end
redis.call('SET', KEYS[1], ARGV[2], 'PXAT', expires)
redis.call('ZADD', KEYS[4], 'GT', expires + (expires - now), ARGV[6])
local last = tonumber(redis.call('ZRANGE', KEYS[4], -1, -1, 'WITHSCORES')[2])
redis.call('SET', KEYS[3], ARGV[5], 'PXAT', last)
redis.call('PEXPIREAT', KEYS[4], last)
redis.call('DEL', KEYS[2])
return 1
