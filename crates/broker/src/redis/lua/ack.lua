#!lua
-- Acknowledges a channel's history up to an offset. KEYS: stream, meta.
-- ARGV: offset, the epoch it belongs to ('' for the current one), epoch for a history that
-- does not exist yet, its ttl ms.
-- Returns {epoch, top offset, acknowledged offset now}. The acknowledgement moves only
-- forwards, and only for an offset of the current epoch at most the top; the caller tells
-- a refusal from the reply.
local stream, meta = KEYS[1], KEYS[2]
local epoch = redis.call('HGET', meta, 'e')
if not epoch then
  epoch = ARGV[3]
  redis.call('DEL', stream)
  redis.call('HSET', meta, 'e', epoch)
  redis.call('PEXPIRE', meta, ARGV[4])
end
local top = tonumber(redis.call('HGET', meta, 'o') or '0')
-- A counter that went back (a restart from a file that missed the last writes) pulls the
-- acknowledgement back with it: nothing beyond the top can have been processed.
local stored = tonumber(redis.call('HGET', meta, 'a') or '0')
local acked = math.min(stored, top)
local offset = tonumber(ARGV[1])
if (ARGV[2] == '' or ARGV[2] == epoch) and offset <= top and offset > acked then
  acked = offset
end
if acked ~= stored then redis.call('HSET', meta, 'a', string.format('%d', acked)) end
return {epoch, top, acked}
