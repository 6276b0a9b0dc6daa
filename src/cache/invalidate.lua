-- Removes a URL's stored response: its entry (or the pointer of a varying
-- URL: its variants are then never used again) and every variant recorded,
-- its fill lease (a fill under it running now is not stored), and, when
-- the URL records variants, stamps the time, for the fills under a
-- variant's lease (see fill.lua). Only then: a flood of writes to made-up
-- URLs leaves no key behind.
--
-- KEYS[1]  the URL's fill lease
-- KEYS[2]  the URL's key (an entry or a pointer)
-- KEYS[3]  the URL's places (sorted set of variant ids)
-- KEYS[4]  when the URL was last invalidated (Unix ms)
-- ARGV[1]  what the URL's variant keys begin with (they share KEYS[2]'s
--          hash tag)
-- ARGV[2]  how long the stamp is kept, ms
-- ARGV[3]  what the URL's variants' leases begin with (the same hash tag)
--
-- Returns how many entries were removed (a pointer is not one).
-- The stamp first: should anything below fail, no earlier fill lands.
if redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('SET', KEYS[4], string.format('%d', now_ms()), 'PX', ARGV[2])
end
redis.call('DEL', KEYS[1])
local removed = 0
local held = redis.call('GET', KEYS[2])
if held then
  redis.call('DEL', KEYS[2])
  if string.sub(held, 1, 4) ~= 'RLV1' then
    removed = 1
  end
end
for _, id in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
  removed = removed + redis.call('DEL', ARGV[1] .. id)
  redis.call('DEL', ARGV[3] .. id)
end
redis.call('DEL', KEYS[3])
return removed
