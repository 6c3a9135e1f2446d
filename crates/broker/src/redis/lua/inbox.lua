#!lua
-- Reads where a channel's history and its acknowledgement stand. KEYS: stream, meta.
-- ARGV: epoch for a history that does not exist yet, its ttl ms.
-- Returns {epoch, top offset, acknowledged offset, oldest kept offset (0: none)}.
local stream, meta = KEYS[1], KEYS[2]
local epoch = redis.call('HGET', meta, 'e')
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', stream)
  redis.call('HSET', meta, 'e', epoch)
  redis.call('PEXPIRE', meta, ARGV[2])
end
local top = tonumber(redis.call('HGET', meta, 'o') or '0')
local acked = math.min(tonumber(redis.call('HGET', meta, 'a') or '0'), top)
local first = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)
local oldest = 0
if first[1] then oldest = tonumber(string.match(first[1][1], '^(%d+)')) end
return {epoch, top, acked, oldest}
