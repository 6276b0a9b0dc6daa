-- The record's layout (see layout.rs): "RLI1", a state byte (1 in flight,
-- 2 complete), the fencing token as a big-endian double, the request's
-- fingerprint (32 bytes), then (complete only) the response.
--
-- holds(rec, token): the record is in flight under `token` (8 bytes).
local function holds(rec, token)
  return rec ~= false and rec ~= nil and string.sub(rec, 1, 4) == 'RLI1'
    and string.byte(rec, 5) == 1 and string.sub(rec, 6, 13) == token
end
