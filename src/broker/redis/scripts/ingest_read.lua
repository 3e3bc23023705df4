-- Reads an ingest partition as its lease holder, and only as its holder.
-- KEYS[1] lease, KEYS[2] ingest stream.
-- ARGV[1] lease token, ARGV[2] consumer, ARGV[3] count, ARGV[4] '>' (new
-- entries), '0' (entries pending to us) or 'claim' (take over every pending
-- entry, continuing at cursor ARGV[5]); ARGV[6..] ids of the previous
-- batch, routed now, to XACK first.
-- Returns -1 when the lease is not ours (expired, or taken by another
-- replica after a stall): a stale owner can then neither read new entries
-- nor steal pending ones, so only the high-water mark has to guard the
-- batch it read before it stalled. Otherwise the XREADGROUP reply (nil when
-- empty), or for 'claim' the next XAUTOCLAIM cursor ('0-0' when done, after
-- deleting the previous owners' consumers, which then hold nothing).
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
if #ARGV > 5 then
  redis.call('XACK', KEYS[2], 'router', unpack(ARGV, 6))
end
if ARGV[4] == 'claim' then
  local r = redis.call('XAUTOCLAIM', KEYS[2], 'router', ARGV[2], 0, ARGV[5], 'COUNT', ARGV[3], 'JUSTID')
  if r[1] == '0-0' then
    -- Everything pending is ours now: forget the consumers of earlier
    -- owners (one per process incarnation), which hold nothing.
    for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[2], 'router')) do
      local f = {}
      for i = 1, #c, 2 do f[c[i]] = c[i + 1] end
      if f.name ~= ARGV[2] and tonumber(f.pending) == 0 then
        redis.call('XGROUP', 'DELCONSUMER', KEYS[2], 'router', f.name)
      end
    end
  end
  return r[1]
end
return redis.call('XREADGROUP', 'GROUP', 'router', ARGV[2], 'COUNT', ARGV[3], 'STREAMS', KEYS[2], ARGV[4])
