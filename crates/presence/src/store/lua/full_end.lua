-- Ends a full state: removes at most `limit` connections the parts did not mention. ARGV:
-- prefix, gateway, seq, ttl ms, grace ms, limit. Returns {'more', events} while some remain,
-- then records the batch number and returns {'ok', events}.
local gw, seq = ARGV[2], ARGV[3]
local ttl, grace, limit = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local want = P .. 'want:' .. gw
redis.call('ZADD', P .. 'gw', now + ttl, gw)
local removed = 0
for _, conn in ipairs(redis.call('HKEYS', P .. 'g:' .. gw)) do
  if redis.call('SISMEMBER', want, conn) == 0 then
    if removed >= limit then return {'more', ev} end
    disconnect(gw, conn, grace)
    removed = removed + 1
  end
end
redis.call('DEL', want)
redis.call('HSET', P .. 'gwseq', gw, seq)
return {'ok', ev}
