-- Forgets a subscription's dead consumers: names are unique per consumer
-- and process incarnation, so without this every connection ever made
-- would stay in the bands' consumer groups.
-- KEYS[1] consumers hash (name -> heartbeat ms), KEYS[2..11] bands 1..10.
-- ARGV[1] heartbeat cutoff ms (older = dead), ARGV[2] min idle ms,
-- ARGV[3] the "returned" pseudo-consumer (kept).
-- A consumer is deleted from a band's group only when it holds nothing
-- there (its deliveries are reclaimed first) and has been idle at least
-- ARGV[2]. Returns the number of group consumers deleted.
local alive = {}
local hb = redis.call('HGETALL', KEYS[1])
for i = 1, #hb, 2 do
  if tonumber(hb[i + 1]) >= tonumber(ARGV[1]) then
    alive[hb[i]] = true
  else
    redis.call('HDEL', KEYS[1], hb[i])
  end
end
local removed = 0
for b = 2, #KEYS do
  local cs = redis.pcall('XINFO', 'CONSUMERS', KEYS[b], 'g')
  if type(cs) == 'table' and not cs.err then
    for _, c in ipairs(cs) do
      local f = {}
      for i = 1, #c, 2 do f[c[i]] = c[i + 1] end
      if f.name ~= ARGV[3] and not alive[f.name] and tonumber(f.pending) == 0
          and tonumber(f.idle) >= tonumber(ARGV[2]) then
        redis.call('XGROUP', 'DELCONSUMER', KEYS[b], 'g', f.name)
        removed = removed + 1
      end
    end
  end
end
return removed
