-- Completes several deliveries of one subscription: XACK + XDEL each.
-- KEYS[1] info hash, KEYS[2..11] priority bands 1..10.
-- ARGV pairs (band 1..10, entry id).
-- Returns one 1 (acked) or 0 (not pending: acked, timed out, unknown) per
-- pair, in order.
-- Per band, one XACK and one XDEL for all its ids when every one of them
-- was pending (the usual case); otherwise id by id, to tell which were.
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms) or 0, tonumber(seq) or 0
end
local function newer(a, b)
  local ams, aseq = parse(a)
  local bms, bseq = parse(b)
  if ams ~= bms then return ams > bms end
  return aseq > bseq
end
local out = {}
local by_band = {}
for i = 1, #ARGV, 2 do
  local b = tonumber(ARGV[i])
  local ids = by_band[b]
  if not ids then
    ids = {}
    by_band[b] = ids
  end
  ids[#ids + 1] = ARGV[i + 1]
  out[(i + 1) / 2] = 0
end
local acked = 0
local done = {}
for b, ids in pairs(by_band) do
  local key = KEYS[1 + b]
  local n = redis.call('XACK', key, 'g', unpack(ids))
  if n == #ids then
    redis.call('XDEL', key, unpack(ids))
    acked = acked + n
    for _, id in ipairs(ids) do done[b .. '-' .. id] = 1 end
  elseif n > 0 then
    -- Some were pending and are acked now. Which ones: those still in
    -- the stream (every completion deletes its entry) that the group
    -- had delivered (an entry never read is not pending).
    local last = '0-0'
    for _, g in ipairs(redis.call('XINFO', 'GROUPS', key)) do
      local f = {}
      for j = 1, #g, 2 do f[g[j]] = g[j + 1] end
      if f.name == 'g' then last = f['last-delivered-id'] end
    end
    for _, id in ipairs(ids) do
      local k = b .. '-' .. id
      if done[k] == nil and not newer(id, last)
          and #redis.call('XRANGE', key, id, id) > 0 then
        redis.call('XDEL', key, id)
        done[k] = 1
        acked = acked + 1
      end
    end
  end
end
for i = 1, #ARGV, 2 do
  local k = ARGV[i] .. '-' .. ARGV[i + 1]
  if done[k] == 1 then
    out[(i + 1) / 2] = 1
    done[k] = 0
  end
end
if acked > 0 then redis.call('HINCRBY', KEYS[1], 'acked', acked) end
return out
