-- A gateway's batch of changes. ARGV: prefix, gateway, seq, ttl ms, grace ms, body.
-- Body (JSON): [{o = 'c'|'d'|'s'|'x', k = conn, u = user, i = info, ch = channel}].
-- Applied only when seq is one more than the last applied batch; the same seq again is a
-- retry (skipped, lease renewed). Returns {'ok', events} or {'resync'}.
local gw, seq = ARGV[2], tonumber(ARGV[3])
local ttl, grace = tonumber(ARGV[4]), tonumber(ARGV[5])
if not redis.call('ZSCORE', P .. 'gw', gw) then return {'resync'} end
local last = tonumber(redis.call('HGET', P .. 'gwseq', gw) or '-1')
if last < 0 or seq > last + 1 then return {'resync'} end
redis.call('ZADD', P .. 'gw', now + ttl, gw)
if seq <= last then return {'ok', ev} end
redis.call('HSET', P .. 'gwseq', gw, seq)
for _, c in ipairs(cjson.decode(ARGV[6])) do
  if c.o == 'c' then connect(gw, c.k, c.u, c.i, grace)
  elseif c.o == 'd' then disconnect(gw, c.k, grace)
  elseif c.o == 's' then subscribe(gw, c.k, c.ch)
  elseif c.o == 'x' then unsubscribe(gw, c.k, c.ch, grace)
  end
end
return {'ok', ev}
