-- Hands a consumer up to COUNT deliveries, highest priority first.
-- KEYS[1] info hash, KEYS[2] retry zset, KEYS[3..12] priority bands 1..10.
-- ARGV[1] consumer, ARGV[2] count, ARGV[3] name of the "returned" pseudo
-- consumer that holds deliveries released by departed consumers.
-- First promotes due retries into their bands; then, per band from 10 down
-- to 1, takes returned deliveries (they keep their place at the band's
-- front) and then new entries.
-- Sets the info hash's `returned` to the returned deliveries left.
-- Returns -1 if the subscription is gone, else
-- {{band, id, deliveries, {field, value, ...}}, ...}, next retry due ms
-- (or ''), and the server time in ms.
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 100)
for _, m in ipairs(due) do
  local r = cjson.decode(m)
  redis.call('XADD', KEYS[2 + r.b], '*', 'ev', r.e, 'dl', r.d, 'nf', r.f, 'hist', r.h)
  redis.call('ZREM', KEYS[2], m)
end
local want = tonumber(ARGV[2])
local out = {}
for b = 10, 1, -1 do
  if want <= 0 then break end
  local key = KEYS[2 + b]
  -- An empty band holds neither returned nor new entries (delivered
  -- entries stay in the stream until acked).
  if redis.call('XLEN', key) > 0 then
    local ret = redis.call('XPENDING', key, 'g', '-', '+', want, ARGV[3])
    if #ret > 0 then
      local ids, counts = {}, {}
      for _, p in ipairs(ret) do
        ids[#ids + 1] = p[1]
        counts[p[1]] = p[4]
      end
      local claimed = redis.call('XCLAIM', key, 'g', ARGV[1], 0, unpack(ids))
      for _, e in ipairs(claimed) do
        if e and e[2] then
          out[#out + 1] = {b, e[1], counts[e[1]] + 1, e[2]}
          want = want - 1
        end
      end
    end
    if want > 0 then
      local r = redis.call('XREADGROUP', 'GROUP', 'g', ARGV[1], 'COUNT', want, 'STREAMS', key, '>')
      if r then
        for _, e in ipairs(r[1][2]) do
          out[#out + 1] = {b, e[1], 1, e[2]}
          want = want - 1
        end
      end
    end
  end
end
if #out > 0 then redis.call('HINCRBY', KEYS[1], 'delivered', #out) end
-- Returned deliveries still waiting: the fast path (a plain XREADGROUP)
-- comes here again while this count is above zero.
local left = 0
for b = 1, 10 do
  local key = KEYS[2 + b]
  local ok, sum = pcall(redis.call, 'XPENDING', key, 'g')
  if ok and type(sum[4]) == 'table' then
    for _, c in ipairs(sum[4]) do
      if c[1] == ARGV[3] then left = left + tonumber(c[2]) end
    end
  end
end
redis.call('HSET', KEYS[1], 'returned', left)
local nxt = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
return {out, nxt[2] or '', now}
