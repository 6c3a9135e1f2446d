#!lua
-- One publish to a channel with history. KEYS: stream, meta[, idempotency key].
-- ARGV: Pub/Sub channel, payload without its opening '{', message id, size, ttl ms,
-- idempotency ttl ms, epoch for a history that does not exist yet, the command that publishes
-- (PUBLISH, or SPUBLISH on a cluster: the channel shares the keys' hash tag and slot).
-- Returns {offset, epoch, message id, deduplicated (0|1)}.
local stream, meta, seen_key = KEYS[1], KEYS[2], KEYS[3]
if seen_key then
  local seen = redis.call('GET', seen_key)
  if seen then
    local offset, epoch, id = string.match(seen, '^(%d+):(%w*):(.*)$')
    return {tonumber(offset), epoch, id, 1}
  end
end
local epoch = redis.call('HGET', meta, 'e')
if not epoch then
  -- A new history: whatever a lost meta key left behind is not part of it.
  epoch = ARGV[7]
  redis.call('DEL', stream)
  redis.call('HSET', meta, 'e', epoch)
end
local offset = string.format('%d', redis.call('HINCRBY', meta, 'o', 1))
local frame = '{"offset":' .. offset .. ',' .. ARGV[2]
redis.call('XADD', stream, 'MAXLEN', ARGV[4], offset .. '-0', 'd', frame)
redis.call('PEXPIRE', stream, ARGV[5])
redis.call('PEXPIRE', meta, ARGV[5])
if seen_key then
  redis.call('SET', seen_key, offset .. ':' .. epoch .. ':' .. ARGV[3], 'PX', ARGV[6])
end
redis.call(ARGV[8], ARGV[1], '~1 ' .. offset .. ' ' .. epoch .. '\n' .. frame)
return {tonumber(offset), epoch, ARGV[3], 0}
