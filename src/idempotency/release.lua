-- Frees a claimed key (the handler failed), only for its holder.
--
-- KEYS[1]  the record
-- ARGV[1]  the holder id (8 bytes)
--
-- Returns 1 when released, 0 when the claim was already lost.
if holds(redis.call('GET', KEYS[1]), ARGV[1]) then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
