-- Moves dead letters back into their bands with fresh attempts.
-- KEYS[1] dead-letter stream, KEYS[2..11] priority bands 1..10.
-- ARGV: entry ids, or none for all (at most 10000 per call).
-- Returns the number moved.
local entries = {}
if #ARGV == 0 then
  entries = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 10000)
else
  for _, id in ipairs(ARGV) do
    local e = redis.call('XRANGE', KEYS[1], id, id)
    if #e > 0 then entries[#entries + 1] = e[1] end
  end
end
local moved = 0
for _, e in ipairs(entries) do
  local f = {}
  for i = 1, #e[2], 2 do f[e[2][i]] = e[2][i + 1] end
  local band = tonumber(f.b)
  if band and f.ev then
    redis.call('XADD', KEYS[1 + band], '*', 'ev', f.ev, 'dl', 0, 'nf', 0, 'hist', '[]')
  end
  redis.call('XDEL', KEYS[1], e[1])
  moved = moved + 1
end
return moved
