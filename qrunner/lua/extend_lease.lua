--[[ extend_lease: heartbeat of one consumer on one queue, and lease renewal of its entries.

Each entry this consumer still owns has its idle time reset (XCLAIM ... JUSTID, which does not
count a delivery), so XAUTOCLAIM elsewhere does not steal a job that is alive but slow. Entries
now owned by someone else are reported back: this worker lost them and must not ack them.

KEYS[1]   stream          qr:{q}:stream
KEYS[2]   consumers hash  qr:{q}:consumers (consumer name -> last heartbeat ms)
ARGV[1]   consumer group
ARGV[2]   consumer name
ARGV[3]   now_ms, or "" to read the Redis clock (TIME)
ARGV[4..] stream entry ids held by this consumer
Returns   array of entry ids this consumer no longer owns
]]
local now
if ARGV[3] ~= '' then
  now = tonumber(ARGV[3])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
redis.call('HSET', KEYS[2], ARGV[2], now)
local lost = {}
for i = 4, #ARGV do
  local id = ARGV[i]
  local pend = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
  if #pend == 1 and pend[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id, 'JUSTID')
  else
    lost[#lost + 1] = id
  end
end
return lost
