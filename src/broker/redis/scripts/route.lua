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
local moved = false
local added = 0
for i = 2, #ARGV, 3 do
  local id = ARGV[i]
  if (not hwm) or newer(id, hwm) then
    local band = tonumber(ARGV[i + 1])
    -- A first attempt stores only the event: dl, nf and hist default to
    -- 0, 0 and [] (fetch.lua and fail.lua read them that way).
    redis.call('XADD', KEYS[2 + band], '*', 'ev', ARGV[i + 2])
    added = added + 1
    hwm = id
    moved = true
  end
end
if moved then redis.call('HSET', KEYS[2], ARGV[1], hwm) end
if added > 0 then redis.call('HINCRBY', KEYS[1], 'routed', added) end
return added
