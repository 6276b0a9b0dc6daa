-- Counts a fencing token for the claim's holder, only while it holds the
-- key: a holder whose lease ran out (and whose key another request may
-- have claimed since) gets none, so tokens rise in the order of claims.
--
-- KEYS[1]  the record
-- KEYS[2]  its fencing-token counter (same hash tag)
-- ARGV[1]  the holder id (8 bytes)
-- ARGV[2]  how long the counter lives past this token (ms)
--
-- Returns the token, or 0 when the key is not (or no longer) held by the
-- holder.
if not holds(redis.call('GET', KEYS[1]), ARGV[1]) then
  return 0
end
local token = redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return token
