--[[ ack: finish a batch of entries this consumer owns: XACK + XDEL + final status, atomically.

An entry whose pending owner is not this consumer (its lease lapsed and another worker claimed
it) is refused and left untouched: a zombie's late ack must not remove another worker's claim.

KEYS[1]        stream   qr:{q}:stream
KEYS[1+i]      status hash of entry i   qr:{q}:job:<id>
ARGV[1]        consumer group
ARGV[2]        consumer name
ARGV[3]        now_ms, or "" to read the Redis clock (TIME)
ARGV[4]        result TTL in ms (status records of finished jobs)
ARGV[5..]      per entry, 3 values: stream entry id, attempt, result JSON ("" = none)
Returns        array of 1 (acked) / 0 (refused: not owned by this consumer) per entry
]]
local now
if ARGV[3] ~= '' then
  now = tonumber(ARGV[3])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local group, consumer, ttl = ARGV[1], ARGV[2], tonumber(ARGV[4])
local out = {}
local n = (#ARGV - 4) / 3
for i = 0, n - 1 do
  local a = 5 + i * 3
  local id = ARGV[a]
  local pend = redis.call('XPENDING', KEYS[1], group, id, id, 1)
  if #pend == 1 and pend[1][2] == consumer then
    redis.call('XACK', KEYS[1], group, id)
    redis.call('XDEL', KEYS[1], id)
    local sk = KEYS[2 + i]
    if ARGV[a + 2] ~= '' then
      redis.call('HSET', sk, 'state', 'succeeded', 'attempt', ARGV[a + 1], 'finished_ms', now, 'result', ARGV[a + 2])
    else
      redis.call('HSET', sk, 'state', 'succeeded', 'attempt', ARGV[a + 1], 'finished_ms', now)
    end
    redis.call('PEXPIRE', sk, ttl)
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
