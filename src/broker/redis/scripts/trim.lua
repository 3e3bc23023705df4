-- Cuts acked entries out of a subscription's bands (acks only XACK).
-- KEYS[1..10] priority bands 1..10 (consumer group 'g').
-- A band's floor is its oldest pending entry, or else the entry after the
-- group's last delivered one: everything below it was delivered and acked.
-- `MINID ~` removes whole stream nodes only, so a few acked entries may
-- stay until a later pass. Returns the number of entries removed.
local removed = 0
for b = 1, #KEYS do
  local key = KEYS[b]
  if redis.call('XLEN', key) > 0 then
    local last = nil
    local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', key)
    if ok then
      for _, g in ipairs(groups) do
        local f = {}
        for i = 1, #g, 2 do f[g[i]] = g[i + 1] end
        if f.name == 'g' then last = f['last-delivered-id'] end
      end
    end
    if last and last ~= '0-0' then
      local floor
      local pend = redis.call('XPENDING', key, 'g')
      if tonumber(pend[1]) > 0 then
        floor = pend[2]
      else
        local ms, sq = string.match(last, '^(%d+)-(%d+)$')
        floor = ms .. '-' .. (tonumber(sq) + 1)
      end
      removed = removed + redis.call('XTRIM', key, 'MINID', '~', floor)
    end
  end
end
return removed
