-- Compare-and-set of one subscription in the routing config; bumps the
-- version that replicas watch.
-- KEYS[1] subscriptions hash, KEYS[2] version counter.
-- ARGV[1] name, ARGV[2] expected current value ('' = absent), ARGV[3] new
-- value ('' = delete). Returns 1 on success, 0 if the current value differs.
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then cur = '' end
if cur ~= ARGV[2] then return 0 end
if ARGV[3] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
end
redis.call('INCR', KEYS[2])
return 1
