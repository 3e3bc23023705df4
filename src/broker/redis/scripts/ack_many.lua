-- Completes several deliveries of one subscription: XACK + XDEL each.
-- KEYS[1] info hash, KEYS[2..11] priority bands 1..10.
-- ARGV pairs (band 1..10, entry id).
-- Returns one 1 (acked) or 0 (not pending: acked, timed out, unknown) per
-- pair, in order.
local out = {}
local acked = 0
for i = 1, #ARGV, 2 do
  local key = KEYS[1 + tonumber(ARGV[i])]
  local n = redis.call('XACK', key, 'g', ARGV[i + 1])
  if n == 1 then
    redis.call('XDEL', key, ARGV[i + 1])
    acked = acked + 1
  end
  out[#out + 1] = n
end
if acked > 0 then redis.call('HINCRBY', KEYS[1], 'acked', acked) end
return out
