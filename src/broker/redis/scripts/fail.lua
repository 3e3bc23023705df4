-- Records a failed attempt (nack, ack timeout, lost consumer) and schedules
-- a retry or dead-letters the event.
-- KEYS[1] info, KEYS[2] band, KEYS[3] retry zset, KEYS[4] dead-letter stream.
-- ARGV: 1 entry id, 2 band (1..10), 3 reason, 4 delay ms (-1 = backoff),
-- 5 max attempts, 6 dead letter ('1'/'0'), 7 dead-letter cap ('0' = none),
-- 8 backoff initial ms, 9 backoff max ms, 10 multiplier, 11 jitter,
-- 12 random in [0,1), 13 required owner ('' = any), 14 required idle ms.
-- Returns 0 (not pending or not the owner's), 1 retry, 2 dead-lettered,
-- 3 discarded.
local p = redis.call('XPENDING', KEYS[2], 'g', ARGV[1], ARGV[1], 1)
if #p == 0 then return 0 end
if ARGV[13] ~= '' and p[1][2] ~= ARGV[13] then return 0 end
if tonumber(p[1][3]) < tonumber(ARGV[14]) then return 0 end
local count = tonumber(p[1][4])
local e = redis.call('XRANGE', KEYS[2], ARGV[1], ARGV[1])
redis.call('XACK', KEYS[2], 'g', ARGV[1])
if #e == 0 then
  redis.call('HINCRBY', KEYS[1], 'lost', 1)
  return 0
end
redis.call('XDEL', KEYS[2], ARGV[1])
local f = {}
local fl = e[1][2]
for i = 1, #fl, 2 do f[fl[i]] = fl[i + 1] end
-- A first attempt's entry holds only `ev` (route.lua).
local dl = tonumber(f.dl or 0) + count
local nf = tonumber(f.nf or 0) + 1
f.hist = f.hist or '[]'
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local item = '{"attempt":' .. dl .. ',"at_ms":' .. now .. ',"reason":' .. cjson.encode(ARGV[3]) .. '}'
local hist
if f.hist == '[]' then
  hist = '[' .. item .. ']'
else
  hist = string.sub(f.hist, 1, -2) .. ',' .. item .. ']'
end
redis.call('HINCRBY', KEYS[1], 'retried', 1)
if nf >= tonumber(ARGV[5]) then
  if ARGV[6] == '1' then
    local args = {'XADD', KEYS[4]}
    if ARGV[7] ~= '0' then
      args[#args + 1] = 'MAXLEN'
      args[#args + 1] = '~'
      args[#args + 1] = ARGV[7]
    end
    local rest = {'*', 'ev', f.ev, 'reason', ARGV[3], 'att', dl, 'hist', hist, 'at', now, 'b', ARGV[2]}
    for _, v in ipairs(rest) do args[#args + 1] = v end
    redis.call(unpack(args))
    redis.call('HINCRBY', KEYS[1], 'dead_lettered', 1)
    return 2
  end
  redis.call('HINCRBY', KEYS[1], 'discarded', 1)
  return 3
end
local delay = tonumber(ARGV[4])
if delay < 0 then
  local mult = math.max(tonumber(ARGV[10]), 1)
  local base = tonumber(ARGV[8]) * math.pow(mult, math.min(nf - 1, 64))
  base = math.min(base, tonumber(ARGV[9]))
  local j = math.min(math.max(tonumber(ARGV[11]), 0), 1)
  delay = math.floor(base * (1 - j * tonumber(ARGV[12])))
end
if delay <= 0 then
  redis.call('XADD', KEYS[2], '*', 'ev', f.ev, 'dl', dl, 'nf', nf, 'hist', hist)
else
  local m = cjson.encode({u = ARGV[2] .. '-' .. ARGV[1], b = tonumber(ARGV[2]), e = f.ev, d = dl, f = nf, h = hist})
  redis.call('ZADD', KEYS[3], now + delay, m)
end
return 1
