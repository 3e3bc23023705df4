-- Completes a delivery: XACK + XDEL in one step (XACKDEL needs Redis 8.2).
-- KEYS[1] info hash, KEYS[2] band. ARGV[1] entry id, ARGV[2] counter to bump
-- ('acked', or 'expired' for an event dropped for its TTL).
-- Returns 1, or 0 if the delivery was not pending (acked, timed out, unknown).
local n = redis.call('XACK', KEYS[2], 'g', ARGV[1])
if n == 0 then return 0 end
redis.call('XDEL', KEYS[2], ARGV[1])
redis.call('HINCRBY', KEYS[1], ARGV[2], 1)
return 1
