-- Removes a URL's stored response: its entry (or the pointer of a varying
-- URL) and every variant recorded, and its fill lease, so a fill running
-- now is not stored (its response may predate the write).
--
-- KEYS[1]  the URL's fill lease
-- KEYS[2]  the URL's key (an entry or a pointer)
-- KEYS[3]  the URL's sorted set of variants
-- ARGV[1]  what the URL's variant keys begin with (they share KEYS[2]'s
--          hash tag)
--
-- Returns how many entries (and pointer) were removed.
redis.call('DEL', KEYS[1])
local removed = redis.call('DEL', KEYS[2])
for _, id in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
  removed = removed + redis.call('DEL', ARGV[1] .. id)
end
redis.call('DEL', KEYS[3])
return removed
