-- One part of a gateway's full state. ARGV: prefix, gateway, first ('1' or '0'), ttl ms,
-- grace ms, body: [{k = conn, u = user, i = info, c = [channel]}].
-- A full state is applied in parts so no single script holds Redis for long: each part adds
-- or updates its connections and remembers them in P..'want:'..gw; `full_end.lua` then
-- removes what was not mentioned. Until then the gateway counts as resynchronising (its
-- batch number is cleared), so a stray batch is answered `resync`. Returns {'ok', events}.
local gw, first = ARGV[2], ARGV[3] == '1'
local ttl, grace = tonumber(ARGV[4]), tonumber(ARGV[5])
local want = P .. 'want:' .. gw
if first then
  redis.call('DEL', want)
  redis.call('HDEL', P .. 'gwseq', gw)
end
redis.call('ZADD', P .. 'gw', now + ttl, gw)
local gk = P .. 'g:' .. gw
for _, s in ipairs(cjson.decode(ARGV[6])) do
  redis.call('SADD', want, s.k)
  connect(gw, s.k, s.u, s.i, grace)
  local have = cjson.decode(redis.call('HGET', gk, s.k)).c
  local wanted = {}
  for _, ch in ipairs(s.c) do
    wanted[ch] = true
    subscribe(gw, s.k, ch)
  end
  for ch, _ in pairs(have) do
    if not wanted[ch] then unsubscribe(gw, s.k, ch, grace) end
  end
end
redis.call('PEXPIRE', want, ttl * 2)
return {'ok', ev}
