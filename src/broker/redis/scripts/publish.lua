-- Appends events to one ingest partition and fans them out live.
-- KEYS[1] ingest stream, KEYS[2] meta hash (epoch, seq, agecheck), KEYS[3]
-- live shard channel,
-- then, when the dedup window is on, one dedup key per event.
-- ARGV[1] epoch candidate, ARGV[2] MINID threshold in ms ('0' = none),
-- ARGV[3] MAXLEN cap ('0' = none), ARGV[4] n, ARGV[5] dedup window in ms
-- ('0' = off), then n x (eid, topic, key, prio, ts_ms, event_json).
-- Returns {id1, seq1, id2, seq2, ...}; an event whose id was stored within
-- the dedup window is not stored again and returns the first id and seq 0.
-- Lua does not roll back: every check comes before the first write.
local n = tonumber(ARGV[4])
local window = tonumber(ARGV[5])
if n == nil or window == nil or #ARGV ~= 5 + n * 6 then
  return redis.error_reply('ERR publish: malformed arguments')
end
if window > 0 and #KEYS ~= 3 + n then
  return redis.error_reply('ERR publish: one dedup key per event expected')
end
-- Known ids (earlier publishes, or earlier in this batch).
local known = {}
local first_in_batch = {}
if window > 0 then
  for i = 1, n do
    local eid = ARGV[6 + (i - 1) * 6]
    local prev = redis.call('GET', KEYS[3 + i])
    if prev then
      known[i] = prev
    elseif first_in_batch[eid] then
      known[i] = first_in_batch[eid]
    else
      first_in_batch[eid] = i
    end
  end
end
-- One read of the meta hash: the epoch, and when the age trim was last
-- checked (see Retention).
local meta = redis.call('HMGET', KEYS[2], 'epoch', 'agecheck')
local epoch = meta[1]
if not epoch then
  epoch = ARGV[1]
  redis.call('HSET', KEYS[2], 'epoch', epoch)
end
-- One HINCRBY for the batch: its events take the sequence numbers up to
-- the new value.
local fresh = n
for i = 1, n do
  if known[i] then fresh = fresh - 1 end
end
local seq = 0
if fresh > 0 then seq = redis.call('HINCRBY', KEYS[2], 'seq', fresh) - fresh end
local out = {}
local ids = {}
for i = 1, n do
  local b = 6 + (i - 1) * 6
  local dup = known[i]
  if type(dup) == 'number' then dup = ids[dup] end
  if dup then
    out[#out + 1] = dup
    out[#out + 1] = 0
  else
    seq = seq + 1
    local s = tostring(seq)
    local id = redis.call('XADD', KEYS[1], '*', 'eid', ARGV[b], 'topic', ARGV[b + 1],
      'key', ARGV[b + 2], 'prio', ARGV[b + 3], 'ts', ARGV[b + 4], 'seq', s, 'ev', ARGV[b + 5])
    redis.call('SPUBLISH', KEYS[3], s .. ':' .. epoch .. ':' .. id .. ':' .. ARGV[b + 5])
    if window > 0 then
      redis.call('SET', KEYS[3 + i], id, 'PX', window)
    end
    ids[i] = id
    out[#out + 1] = id
    out[#out + 1] = seq
  end
end

-- Retention. Entries the router has not routed yet (unread, or read and
-- not acked) are never trimmed, whatever their age or the length cap: the
-- ingest stream is the only copy of them.
local function parse(id)
  local ms, sq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(sq)
end
local function before(a, b)
  local ams, asq = parse(a)
  local bms, bsq = parse(b)
  if ams ~= bms then return ams < bms end
  return asq < bsq
end
-- The oldest id routing still needs, and how many entries are unread.
local function router_state()
  local floor, lag = nil, nil
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
    local f = {}
    for i = 1, #g, 2 do f[g[i]] = g[i + 1] end
    if f.name == 'router' then
      floor = f['last-delivered-id']
      lag = tonumber(f.lag)
    end
  end
  if not floor then return '0-0', nil, 0 end
  local pend = redis.call('XPENDING', KEYS[1], 'router')
  local pending = tonumber(pend[1])
  if pending > 0 and before(pend[2], floor) then floor = pend[2] end
  return floor, lag, pending
end
local cap = tonumber(ARGV[3])
local over = cap > 0 and redis.call('XLEN', KEYS[1]) > cap
local old = false
local minid = ARGV[2] .. '-0'
-- The age check reads the oldest entry (whole, into Lua): at most once per
-- second of the threshold's clock per partition, not on every publish.
local threshold = tonumber(ARGV[2])
if threshold ~= 0 and threshold >= (tonumber(meta[2]) or 0) + 1000 then
  redis.call('HSET', KEYS[2], 'agecheck', threshold)
  local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
  old = #first > 0 and before(first[1][1], minid)
end
if over or old then
  local floor, lag, pending = router_state()
  if old then
    if before(floor, minid) then minid = floor end
    redis.call('XTRIM', KEYS[1], 'MINID', '~', minid)
  end
  if over then
    -- MAXLEN keeps the newest `cap` entries: safe when the unrouted ones
    -- (unread + pending, with a margin for acked entries between them)
    -- are fewer. Otherwise trim only what has been routed.
    if lag and lag + pending + 1000 <= cap then
      redis.call('XTRIM', KEYS[1], 'MAXLEN', '~', cap)
    else
      redis.call('XTRIM', KEYS[1], 'MINID', '~', floor)
    end
  end
end
return out
