-- Keep-alive or release of deliveries a consumer holds.
-- KEYS[1..10] priority bands 1..10. ARGV[1] owner, ARGV[2] new owner ('' =
-- keep the owner: only reset the idle time), then pairs (band, id).
-- Only entries still pending to ARGV[1] are touched (a blind XCLAIM would
-- steal back an entry that was reclaimed meanwhile).
-- Returns the ids (as "band-id") that are no longer held by the owner.
local gone = {}
for i = 3, #ARGV, 2 do
  local key = KEYS[tonumber(ARGV[i])]
  local id = ARGV[i + 1]
  local p = redis.call('XPENDING', key, 'g', id, id, 1)
  if #p > 0 and p[1][2] == ARGV[1] then
    local to = ARGV[2]
    if to == '' then to = ARGV[1] end
    redis.call('XCLAIM', key, 'g', to, 0, id, 'JUSTID')
  else
    gone[#gone + 1] = ARGV[i] .. '-' .. id
  end
end
return gone
