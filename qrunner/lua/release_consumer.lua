--[[ release_consumer: delete a consumer from the group only when it owns no pending entries.

A consumer that still owns pending entries is never deleted (its entries would vanish from the
PEL and never be reclaimed).

KEYS[1]   stream          qr:{q}:stream
KEYS[2]   consumers hash  qr:{q}:consumers
ARGV[1]   consumer group
ARGV[2]   consumer name
Returns   1 when deleted, 0 when kept because it still owns entries
Errors    NOGROUP when the stream or group is missing
]]
local pend = redis.pcall('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if pend.err then return qr_error(pend.err) end
if #pend > 0 then
  return 0
end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
redis.call('HDEL', KEYS[2], ARGV[2])
return 1
