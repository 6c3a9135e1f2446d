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
-- Events are collected in `ev` and returned; whoever ran the script emits them over Pub/Sub.
--
-- The backends' event stream (`[events]`) is the last argument of every script, as JSON:
-- {s = {kind = stream key}, m = most entries kept (approximately)}; `{}` when off. A kind
-- with a key is also written there (XADD) by `emit`, in the same atomic step as the state
-- change that caused it: the entry exists exactly when the transition does, once, and
-- survives whatever the state survives (the AOF). Stream keys share the slot of P on a
-- cluster (`EventsConfig::key`).
local P = ARGV[1]
local ES = cjson.decode(ARGV[#ARGV])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ev = {}

-- Records event `e` ({kind, ...} as the engine reads it) and writes it into its stream:
-- fields `type`, `user`, `channel` (join, leave) and `info` (online, join; when the token
-- had one).
local function emit(e)
  ev[#ev + 1] = e
  local key = ES.s and ES.s[e[1]]
  if not key then return end
  local f = {'type', e[1]}
  local user, info
  if e[1] == 'online' or e[1] == 'offline' then
    user, info = e[2], e[3]
  else
    f[#f + 1] = 'channel'
    f[#f + 1] = e[2]
    user, info = e[3], e[4]
  end
  f[#f + 1] = 'user'
  f[#f + 1] = user
  if info then
    f[#f + 1] = 'info'
    f[#f + 1] = info
  end
  redis.call('XADD', key, 'MAXLEN', '~', ES.m, '*', unpack(f))
end

-- Writes a connection's `connect` or `disconnect` into its stream, when that kind has one.
-- These go to the stream only: Pub/Sub has no such events.
local function record_conn(kind, gw, conn, user)
  local key = ES.s and ES.s[kind]
  if not key then return end
  redis.call('XADD', key, 'MAXLEN', '~', ES.m, '*', 'type', kind, 'user', user, 'gateway', gw, 'conn', conn)
end

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
  record_conn('disconnect', gw, conn, rec.u)
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
  record_conn('connect', gw, conn, user)
  local uk = P .. 'u:' .. user
  local fresh = redis.call('EXISTS', uk) == 0
  redis.call('HINCRBY', uk, gw, 1)
  if info then redis.call('HSET', P .. 'info', user, info) else redis.call('HDEL', P .. 'info', user) end
  if fresh then
    redis.call('HINCRBY', P .. 'stats', 'users', 1)
    if redis.call('ZREM', P .. 'off', user) == 0 then emit({'online', user, info or false}) end
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
    emit({'join', ch, rec.u, redis.call('HGET', P .. 'info', rec.u)})
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
