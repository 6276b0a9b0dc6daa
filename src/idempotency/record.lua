-- The record's layout (see layout.rs): "RLI1", a state byte (1 in flight,
-- 2 complete, 3 complete but not kept), the holder id (8 bytes), the
-- request's fingerprint (32 bytes), then (complete only) the response.
--
-- holds(rec, holder): the record is in flight under `holder` (8 bytes).
local function holds(rec, holder)
  return rec ~= false and rec ~= nil and string.sub(rec, 1, 4) == 'RLI1'
    and string.byte(rec, 5) == 1 and string.sub(rec, 6, 13) == holder
end

-- written_by(rec, holder): the record is a completed one of `holder`.
local function written_by(rec, holder)
  local state = string.byte(rec, 5)
  return string.sub(rec, 1, 4) == 'RLI1' and (state == 2 or state == 3)
    and string.sub(rec, 6, 13) == holder
end
