-- One step of a purge of a cache tag: on the first step, sets the keys the
-- tag records aside for the purge (the tag's set starts again empty, so
-- entries tagged from now on wait for the next purge and the purge ends
-- however busy the tag is); then reads a batch of the keys set aside. The
-- caller removes their entries, and only then the keys (ZREM), so a
-- failed removal leaves them for the next purge.
--
-- KEYS[1]  the tag's set (a sorted set: entry key -> Unix ms past which
--          its entry is gone)
-- KEYS[2]  the keys set aside for a purge of the tag (the same form; the
--          same slot)
-- KEYS[3]  when the tag's last purge began (Unix ms; the same slot): a
--          fill that began before it, or less than a second after (the
--          clocks' margin), is not recorded in the tag (so not
--          stored), since its response may predate what the purge
--          announces, and the purge cannot find a fill still running
-- ARGV[1]  '1' on a purge's first step, '0' on the next ones
-- ARGV[2]  the most keys to return (at least 1)
-- ARGV[3]  how long KEYS[3] is kept, ms
--
-- Returns up to ARGV[2] keys set aside whose entries may still live, the
-- soonest gone first; none once the purge is done. Keys a purge that
-- stopped half-way left set aside are part of the next one.
local now = now_ms()
if ARGV[1] == '1' then
  redis.call('SET', KEYS[3], string.format('%d', now), 'PX', ARGV[3])
end
if ARGV[1] == '1' and redis.call('EXISTS', KEYS[1]) == 1 then
  if redis.call('EXISTS', KEYS[2]) == 1 then
    redis.call('ZUNIONSTORE', KEYS[2], 2, KEYS[2], KEYS[1], 'AGGREGATE', 'MAX')
    redis.call('DEL', KEYS[1])
  else
    redis.call('RENAME', KEYS[1], KEYS[2])
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', string.format('%d', now))
-- The keys set aside live as long as their last member (a union has no
-- expiry of its own).
local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
if last[2] then
  redis.call('PEXPIREAT', KEYS[2], string.format('%d', tonumber(last[2])))
end
return redis.call('ZRANGE', KEYS[2], 0, tonumber(ARGV[2]) - 1)
