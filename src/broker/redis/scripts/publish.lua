-- Appends events to one ingest partition and fans them out live.
-- KEYS[1] ingest stream, KEYS[2] meta hash, KEYS[3] live shard channel.
-- ARGV[1] epoch candidate, ARGV[2] MINID threshold ('0' = none),
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
  local args = {'XADD', KEYS[1]}
  if ARGV[2] ~= '0' then
    args[#args + 1] = 'MINID'
    args[#args + 1] = '~'
    args[#args + 1] = ARGV[2]
  end
  local rest = {'*', 'eid', ARGV[b], 'topic', ARGV[b + 1], 'key', ARGV[b + 2],
    'prio', ARGV[b + 3], 'ts', ARGV[b + 4], 'seq', seq, 'ev', ARGV[b + 5]}
  for _, v in ipairs(rest) do args[#args + 1] = v end
  local id = redis.call(unpack(args))
  redis.call('SPUBLISH', KEYS[3], seq .. ':' .. epoch .. ':' .. id .. ':' .. ARGV[b + 5])
  out[#out + 1] = id
  out[#out + 1] = seq
end
if ARGV[3] ~= '0' then
  redis.call('XTRIM', KEYS[1], 'MAXLEN', '~', ARGV[3])
end
return out
