-- Claims a key, or reports what holds it, in one call.
--
-- KEYS[1]  the record
-- KEYS[2]  the key's fencing counter (same hash tag)
-- ARGV[1]  the request's fingerprint (32 bytes)
-- ARGV[2]  the lease (ms)
-- ARGV[3]  how long the counter lives (ms): longer than any record
--
-- Returns one string: "C" and the new token (a big-endian double) when
-- the key was free and is now claimed; else "R", the record's remaining
-- time in ms (a big-endian double), and the record.
local rec = redis.call('GET', KEYS[1])
if rec then
  return 'R' .. struct.pack('>d', redis.call('PTTL', KEYS[1])) .. rec
end
local token = redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
local packed = struct.pack('>d', token)
redis.call('SET', KEYS[1], 'RLI1' .. string.char(1) .. packed .. ARGV[1], 'PX', ARGV[2])
return 'C' .. packed
