-- Stores the response, only for the claim's holder (fencing: a handler
-- that lost its lease cannot overwrite a newer claim).
--
-- KEYS[1]  the record
-- ARGV[1]  the holder id (8 bytes)
-- ARGV[2]  the completed record
-- ARGV[3]  how long it is kept (ms)
--
-- Returns 1 when stored, 0 when the claim was lost.
if holds(redis.call('GET', KEYS[1]), ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
