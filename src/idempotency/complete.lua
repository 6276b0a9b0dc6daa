-- Stores the response for the claim's holder. Fencing: a handler whose
-- claim was taken over by another request cannot overwrite that one's
-- record. Safe to send again: a retried completion (the first one's reply
-- was lost) finds its own record and answers 1 again.
--
-- KEYS[1]  the record
-- ARGV[1]  the holder id (8 bytes)
-- ARGV[2]  the completed record
-- ARGV[3]  how long it is kept (ms)
--
-- Returns 1 when stored (or already stored by this holder), 0 when another
-- request's record is there.
local rec = redis.call('GET', KEYS[1])
if rec and not holds(rec, ARGV[1]) then
  return written_by(rec, ARGV[1]) and 1 or 0
end
-- In flight under this holder, or free (the lease ran out, say while
-- Redis was unreachable, and no one claimed the key since): this outcome
-- is the key's first.
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
