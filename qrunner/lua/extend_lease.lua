--[[ extend_lease: heartbeat of one consumer on one queue, and lease renewal of its entries.

Each entry this consumer still owns has its idle time reset (XCLAIM ... JUSTID, which does not
count a delivery), so XAUTOCLAIM elsewhere does not steal a job that is alive but slow. Entries
now owned by someone else, or no longer pending, are reported back: this worker lost them and
must not ack them. Renewal writes nothing that needs memory; the heartbeat (HSET) does and is
skipped when Redis is out of memory, so renewal never fails for lack of memory.

KEYS[1]   stream          qr:{q}:stream
KEYS[2]   consumers hash  qr:{q}:consumers (consumer name -> last heartbeat ms)
ARGV[1]   consumer group
ARGV[2]   consumer name
ARGV[3]   now_ms, or "" to read the Redis clock (TIME)
ARGV[4..] stream entry ids held by this consumer
Returns   flat array: per entry this consumer no longer owns, its id and -1 (another consumer
          owns it) or -2 (no longer pending: finished, or its stream was flushed)
Errors    NOGROUP when the stream or group is missing
]]
local now = qr_now(ARGV[3])
local lost = {}
for i = 4, #ARGV do
  local id = ARGV[i]
  local pend = redis.pcall('XPENDING', KEYS[1], ARGV[1], id, id, 1)
  if pend.err then return qr_error(pend.err) end
  if #pend == 1 and pend[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id, 'JUSTID')
  else
    lost[#lost + 1] = id
    if #pend == 0 then lost[#lost + 1] = -2 else lost[#lost + 1] = -1 end
  end
end
redis.pcall('HSET', KEYS[2], ARGV[2], now)
return lost
