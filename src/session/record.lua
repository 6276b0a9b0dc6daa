-- The stored session, as layout.rs describes it: a 42-byte header ("S1",
-- then expires, seen, deadline, created and revision as big-endian doubles),
-- then the fields as MessagePack: { u = user, a = user agent,
-- d = { key = json }, i = its own idle timeout (ms, as text),
-- p = its own cookie persistence ("1" or "0") }. Prepended to the session
-- scripts that need it.
local HEADER = 42
local HEADER_FORMAT = '>c2ddddd'
-- What a renewal leaves under the old id for a short while: 'R1' and the
-- successor's handle.
local RENEWED = 'R1'

local function is_renewed(v)
  return string.sub(v, 1, 2) == RENEWED
end

-- The header of value `v` as a table, or nil when it is not a session.
local function header(v)
  if #v < HEADER or string.sub(v, 1, 2) ~= 'S1' then
    return nil
  end
  local _, expires, seen, deadline, created, revision = struct.unpack(HEADER_FORMAT, v)
  return {
    expires = expires, seen = seen, deadline = deadline,
    created = created, revision = revision,
  }
end

local function pack_header(h)
  return struct.pack(HEADER_FORMAT, 'S1', h.expires, h.seen, h.deadline, h.created, h.revision)
end

-- The fields of value `v` (an empty table when there are none).
local function body(v)
  if #v <= HEADER then
    return {}
  end
  return cmsgpack.unpack(string.sub(v, HEADER + 1))
end

-- A reply of numbers as one string of big-endian doubles: a single bulk
-- string reads several times cheaper on the client than an array.
local function reply3(a, b, c)
  return struct.pack('>ddd', a, b, c)
end

local function reply4(a, b, c, d)
  return struct.pack('>dddd', a, b, c, d)
end

local function not_a_session()
  return redis.error_reply('ERR the key holds no session in a known format')
end
