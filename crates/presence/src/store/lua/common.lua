-- Shared by every presence script (prepended to each). ARGV[1] is the key prefix.
--
-- Keys (P = prefix):
--   P..'gw'        zset  gateway -> lease expiry (ms)
--   P..'gwseq'     hash  gateway -> last applied batch number
--   P..'g:'..gw    hash  conn -> {"u": user, "c": {channel: 1, ...}}
--   P..'u:'..user  hash  gateway -> the user's connections there (gone when offline)
--   P..'info'      hash  user -> the token's info claim (JSON text)
--   P..'c:'..ch    hash  user -> the user's connections in the channel
--   P..'off'       zset  user -> when `offline` is due (ms), while in the grace period
--   P..'lv'        zset  [channel, user] (JSON) -> when `leave` is due (ms), while in the
--                        grace period
--   P..'stats'     hash  users, conns
-- Events are collected in `ev` and returned; whoever ran the script emits them.
local P = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ev = {}

-- A user's last connection left the channel: out of the member list at once, `leave` after
-- the grace period (sweep.lua), unless the user is back in the channel by then.
local function leave_channel(ch, user, grace)
  local k = P .. 'c:' .. ch
  if redis.call('HINCRBY', k, user, -1) <= 0 then
    redis.call('HDEL', k, user)
    redis.call('ZADD', P .. 'lv', now + grace, cjson.encode({ch, user}))
  end
end

local function disconnect(gw, conn, grace)
  local gk = P .. 'g:' .. gw
  local raw = redis.call('HGET', gk, conn)
  if not raw then return end
  local rec = cjson.decode(raw)
  for ch, _ in pairs(rec.c) do leave_channel(ch, rec.u, grace) end
  redis.call('HDEL', gk, conn)
  redis.call('HINCRBY', P .. 'stats', 'conns', -1)
  local uk = P .. 'u:' .. rec.u
  if redis.call('HINCRBY', uk, gw, -1) <= 0 then redis.call('HDEL', uk, gw) end
  if redis.call('EXISTS', uk) == 0 then
    redis.call('HINCRBY', P .. 'stats', 'users', -1)
    redis.call('HDEL', P .. 'info', rec.u)
    redis.call('ZADD', P .. 'off', now + grace, rec.u)
  end
end

local function connect(gw, conn, user, info, grace)
  local gk = P .. 'g:' .. gw
  local raw = redis.call('HGET', gk, conn)
  if raw then
    if cjson.decode(raw).u == user then return end
    disconnect(gw, conn, grace)
  end
  redis.call('HSET', gk, conn, cjson.encode({u = user, c = {}}))
  redis.call('HINCRBY', P .. 'stats', 'conns', 1)
  local uk = P .. 'u:' .. user
  local fresh = redis.call('EXISTS', uk) == 0
  redis.call('HINCRBY', uk, gw, 1)
  if info then redis.call('HSET', P .. 'info', user, info) else redis.call('HDEL', P .. 'info', user) end
  if fresh then
    redis.call('HINCRBY', P .. 'stats', 'users', 1)
    if redis.call('ZREM', P .. 'off', user) == 0 then ev[#ev + 1] = {'online', user, info or false} end
  end
end

local function subscribe(gw, conn, ch)
  local gk = P .. 'g:' .. gw
  local raw = redis.call('HGET', gk, conn)
  if not raw then return end
  local rec = cjson.decode(raw)
  if rec.c[ch] then return end
  rec.c[ch] = 1
  redis.call('HSET', gk, conn, cjson.encode(rec))
  -- Back within the grace period of a leave: neither that leave nor a join.
  if redis.call('HINCRBY', P .. 'c:' .. ch, rec.u, 1) == 1
    and redis.call('ZREM', P .. 'lv', cjson.encode({ch, rec.u})) == 0 then
    ev[#ev + 1] = {'join', ch, rec.u, redis.call('HGET', P .. 'info', rec.u)}
  end
end

local function unsubscribe(gw, conn, ch, grace)
  local gk = P .. 'g:' .. gw
  local raw = redis.call('HGET', gk, conn)
  if not raw then return end
  local rec = cjson.decode(raw)
  if not rec.c[ch] then return end
  rec.c[ch] = nil
  redis.call('HSET', gk, conn, cjson.encode(rec))
  leave_channel(ch, rec.u, grace)
end
