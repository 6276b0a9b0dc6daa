-- Prelude of every script in this crate, prepended at compile time
-- (`redis::script!`), so each rule about time is written once.
--
-- now_ms(): the server's time in Unix milliseconds, from TIME. Scripts
-- never take "now" from the application, whose clock may be skewed.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
