#!lua
-- Reads a channel's history. KEYS: stream, meta.
-- ARGV: first offset wanted ('' for the oldest), limit (-1: all), reverse ('1'|'0'),
-- epoch for a history that does not exist yet, its ttl ms, the epoch the reader expects
-- ('' for any: entries are read only if it matches).
-- Returns {epoch, top offset, oldest kept offset (0: none), entries}.
local stream, meta = KEYS[1], KEYS[2]
local epoch = redis.call('HGET', meta, 'e')
if not epoch then
  epoch = ARGV[4]
  redis.call('DEL', stream)
  redis.call('HSET', meta, 'e', epoch)
  redis.call('PEXPIRE', meta, ARGV[5])
end
local top = tonumber(redis.call('HGET', meta, 'o') or '0')
local first = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)
local oldest = 0
if first[1] then oldest = tonumber(string.match(first[1][1], '^(%d+)')) end
local limit = tonumber(ARGV[2])
local entries = {}
if limit ~= 0 and (ARGV[6] == '' or ARGV[6] == epoch) then
  local low = '-'
  if ARGV[1] ~= '' then low = ARGV[1] .. '-0' end
  local cmd
  if ARGV[3] == '1' then cmd = {'XREVRANGE', stream, '+', low} else cmd = {'XRANGE', stream, low, '+'} end
  if limit > 0 then
    cmd[#cmd + 1] = 'COUNT'
    cmd[#cmd + 1] = limit
  end
  entries = redis.call(unpack(cmd))
end
return {epoch, top, oldest, entries}
