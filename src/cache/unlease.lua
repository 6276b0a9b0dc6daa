-- Gives up a cache fill lease, only for its holder (a lease that expired
-- and was taken by another instance is left alone).
--
-- KEYS[1]  the lease
-- ARGV[1]  the holder's token
--
-- Returns 1 when given up, 0 otherwise.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
