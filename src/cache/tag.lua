-- Records a cache entry's key in one of its tags' sets, before the entry
-- is written: drops the members whose entries are gone, then adds the key,
-- scored by when its entry will be gone, unless the set is full. The
-- entry is written (with the expiry returned) only once every tag has
-- recorded it, so a purge of any of its tags finds it.
--
-- KEYS[1]  the tag's set (a sorted set: entry key -> Unix ms past which
--          its entry is gone, margin included)
-- KEYS[2]  when the tag's last purge began (Unix ms; the same slot)
-- ARGV[1]  the entry's key
-- ARGV[2]  the entry's time to live, ms
-- ARGV[3]  the margin added to a member's score, ms (the entry may live
--          on a node whose clock is a little behind this one's)
-- ARGV[4]  the most members the set may hold
-- ARGV[5]  when the fill began (Unix ms, the filling instance's clock)
-- ARGV[6]  how long a purge's start is remembered, ms (KEYS[2]'s life)
--
-- Returns the entry's expiry (Unix ms, from this server's clock) to write
-- it with, or -1 when the set holds that many other live entries already
-- (the entry must then not be written), or -2 when the tag may have been
-- purged since the fill began (the response may predate what the purge
-- announced; a fill older than a purge is remembered counts as such).
-- Clocks may differ by the margin: a fill that began up to that long
-- after a purge counts as older than it.
local now = now_ms()
local margin = tonumber(ARGV[3])
local began = tonumber(ARGV[5])
-- Unreadable: as if purged now.
local raw = redis.call('GET', KEYS[2])
local purged = raw and (tonumber(raw) or math.huge) or 0
if began + tonumber(ARGV[6]) <= now + margin or purged + margin >= began then
  return -2
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now))
if not redis.call('ZSCORE', KEYS[1], ARGV[1])
    and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then
  return -1
end
local expires = now + tonumber(ARGV[2])
-- GT: a member keeps a later score it had (its older entry may outlive
-- this write if this write is never made).
redis.call('ZADD', KEYS[1], 'GT', string.format('%d', expires + margin), ARGV[1])
-- The set lives as long as its last member.
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], string.format('%d', tonumber(last[2])))
return expires
