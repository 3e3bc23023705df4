-- Creates (or repairs after data loss) a subscription's keys.
-- KEYS[1] info hash, KEYS[2..11] priority bands 1..10.
-- ARGV[1] name.
-- Returns the server time in ms.
redis.call('HSETNX', KEYS[1], 'name', ARGV[1])
for i = 2, #KEYS do
  redis.pcall('XGROUP', 'CREATE', KEYS[i], 'g', '0', 'MKSTREAM')
end
local t = redis.call('TIME')
return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
