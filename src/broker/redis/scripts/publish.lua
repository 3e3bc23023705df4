-- Appends events to one ingest partition and fans them out live.
-- KEYS[1] ingest stream, KEYS[2] meta hash, KEYS[3] live shard channel.
-- ARGV[1] epoch candidate, ARGV[2] MINID threshold in ms ('0' = none),
-- ARGV[3] MAXLEN cap ('0' = none), ARGV[4] n, then n x
-- (eid, topic, key, prio, ts_ms, event_json).
-- Returns {id1, seq1, id2, seq2, ...}.
-- Lua does not roll back: every check comes before the first write.
local n = tonumber(ARGV[4])
if n == nil or #ARGV ~= 4 + n * 6 then
  return redis.error_reply('ERR publish: malformed arguments')
end
redis.call('HSETNX', KEYS[2], 'epoch', ARGV[1])
local epoch = redis.call('HGET', KEYS[2], 'epoch')
local out = {}
for i = 0, n - 1 do
  local b = 5 + i * 6
  local seq = redis.call('HINCRBY', KEYS[2], 'seq', 1)
  local id = redis.call('XADD', KEYS[1], '*', 'eid', ARGV[b], 'topic', ARGV[b + 1],
    'key', ARGV[b + 2], 'prio', ARGV[b + 3], 'ts', ARGV[b + 4], 'seq', seq, 'ev', ARGV[b + 5])
  redis.call('SPUBLISH', KEYS[3], seq .. ':' .. epoch .. ':' .. id .. ':' .. ARGV[b + 5])
  out[#out + 1] = id
  out[#out + 1] = seq
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
if ARGV[2] ~= '0' then
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
