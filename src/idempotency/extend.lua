-- Renews a claim's lease, only for its holder.
--
-- KEYS[1]  the record
-- ARGV[1]  the holder id (8 bytes)
-- ARGV[2]  the lease (ms)
--
-- Returns 1 when renewed, 0 when the record is gone or held by another.
if holds(redis.call('GET', KEYS[1]), ARGV[1]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
