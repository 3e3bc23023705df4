-- Queues events into a subscription's bands with fresh attempts (replay).
-- KEYS[1] info hash, KEYS[2..11] priority bands 1..10.
-- ARGV: pairs (priority 1..10, event_json). Returns the number queued, or
-- -1 if the subscription is gone.
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local n = 0
for i = 1, #ARGV, 2 do
  redis.call('XADD', KEYS[1 + tonumber(ARGV[i])], '*', 'ev', ARGV[i + 1], 'dl', 0, 'nf', 0, 'hist', '[]')
  n = n + 1
end
return n
