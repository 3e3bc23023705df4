-- Appends one event to an event stream if the stream is at the expected
-- version. Stream entry ids are `<version>-1`, so the version of the last
-- entry is the stream's version and versions have no gaps.
--
-- KEYS[1]  the event stream
-- ARGV[1]  expected version, or "" for any
-- ARGV[2]  the event as JSON
--
-- Returns {1, new version} or, on a version conflict, {0, current version}.
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local current = 0
if #last > 0 then
  current = tonumber(string.match(last[1][1], '^(%d+)'))
end
if ARGV[1] ~= '' and tonumber(ARGV[1]) ~= current then
  return {0, current}
end
local version = current + 1
redis.call('XADD', KEYS[1], version .. '-1', 'e', ARGV[2])
return {1, version}
