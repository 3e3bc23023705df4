-- Routes ingest entries of one partition into one durable subscription.
-- KEYS[1] info hash, KEYS[2] hwm hash, KEYS[3..12] priority bands 1..10.
-- ARGV[1] partition, then triples (ingest id, priority 1..10, event_json)
-- in ingest order. A new subscription's marks start at the partitions'
-- tails, so it only gets events published after it was created.
-- Entries at or below the partition's high-water mark were routed before
-- (by this or a stale owner) and are skipped, so routing is exactly once
-- and in order. Returns the number added, or -1 if the subscription is gone.
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function newer(a, b)
  local ams, aseq = parse(a)
  local bms, bseq = parse(b)
  if ams ~= bms then return ams > bms end
  return aseq > bseq
end
local hwm = redis.call('HGET', KEYS[2], ARGV[1])
-- Entries come in ingest order: skip those up to the mark, then add the
-- rest without comparing ids again.
local first = 2
if hwm then
  while first <= #ARGV and not newer(ARGV[first], hwm) do first = first + 3 end
end
local added = 0
for i = first, #ARGV, 3 do
  local band = tonumber(ARGV[i + 1])
  -- A first attempt stores only the event: dl, nf and hist default to
  -- 0, 0 and [] (fetch.lua and fail.lua read them that way).
  redis.call('XADD', KEYS[2 + band], '*', 'ev', ARGV[i + 2])
  added = added + 1
end
if added > 0 then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[#ARGV - 2])
  redis.call('HINCRBY', KEYS[1], 'routed', added)
end
return added
