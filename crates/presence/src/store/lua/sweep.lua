-- Removes gateways whose lease ran out and emits the `offline` and `leave` events that are
-- due. ARGV: prefix, grace ms, limit. At most `limit` connections are removed, and at most
-- `limit` events of each kind emitted, per call (the next calls go on) so no call holds Redis
-- for long. Returns {more (1 or 0), events}.
local grace, limit = tonumber(ARGV[2]), tonumber(ARGV[3])
local budget = limit
for _, gw in ipairs(redis.call('ZRANGEBYSCORE', P .. 'gw', '-inf', now, 'LIMIT', 0, 16)) do
  local gk = P .. 'g:' .. gw
  if budget > 0 then
    local conns = redis.call('HRANDFIELD', gk, budget)
    for _, conn in ipairs(conns) do disconnect(gw, conn, grace) end
    budget = budget - #conns
  end
  if redis.call('EXISTS', gk) == 0 then
    redis.call('ZREM', P .. 'gw', gw)
    redis.call('HDEL', P .. 'gwseq', gw)
    redis.call('DEL', P .. 'want:' .. gw)
  else
    return {1, ev}
  end
end
-- A user's leaves go out before the user's offline.
local leaving = redis.call('ZRANGEBYSCORE', P .. 'lv', '-inf', now, 'LIMIT', 0, limit)
for _, member in ipairs(leaving) do
  redis.call('ZREM', P .. 'lv', member)
  local ch, user = unpack(cjson.decode(member))
  if redis.call('HEXISTS', P .. 'c:' .. ch, user) == 0 then emit({'leave', ch, user}) end
end
if #leaving == limit then return {1, ev} end
local due = redis.call('ZRANGEBYSCORE', P .. 'off', '-inf', now, 'LIMIT', 0, limit)
for _, user in ipairs(due) do
  redis.call('ZREM', P .. 'off', user)
  if redis.call('EXISTS', P .. 'u:' .. user) == 0 then emit({'offline', user}) end
end
return {#due == limit and 1 or 0, ev}
