-- Writes a cache entry for the holder of its fill lease, and gives the
-- lease up: an invalidation removes the lease with the entry, so a fill
-- that asked the handler before a write's invalidation finds its lease
-- gone and is not stored (its response may predate the write).
--
-- KEYS[1]  the entry
-- KEYS[2]  its fill lease
-- ARGV[1]  the fill's holder token
-- ARGV[2]  the entry's bytes
-- ARGV[3]  'PX' (ARGV[4] is a time to live, ms) or 'PXAT' (ARGV[4] is a
--          Unix time, ms)
-- ARGV[4]  the expiry, as ARGV[3] says
--
-- Returns 1 when written, 0 when the lease is not (or no longer) the
-- holder's (nothing written).
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2], ARGV[3], ARGV[4])
redis.call('DEL', KEYS[2])
return 1
