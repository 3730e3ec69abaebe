--[[ deadletter: move an owned entry to the dead-letter stream with its reason, atomically.

KEYS[1]   stream              qr:{q}:stream
KEYS[2]   dead-letter stream  qr:{q}:dlq
KEYS[3]   status hash         qr:{q}:job:<id> (may be a placeholder when the entry had no id)
ARGV[1]   consumer group
ARGV[2]   consumer name
ARGV[3]   stream entry id
ARGV[4]   envelope to keep (JSON, error history included; raw bytes for a malformed entry)
ARGV[5]   reason (one line)
ARGV[6]   now_ms, or "" to read the Redis clock (TIME)
ARGV[7]   status TTL in ms
ARGV[8]   task name ("" when unknown)
Returns   the dead-letter entry id, or false when refused (not owned by this consumer)
]]
local now
if ARGV[6] ~= '' then
  now = tonumber(ARGV[6])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local pend = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #pend ~= 1 or pend[1][2] ~= ARGV[2] then
  return false
end
local dlq_id = redis.call('XADD', KEYS[2], '*', 'j', ARGV[4], 'reason', ARGV[5], 'failed_ms', now,
  'task', ARGV[8], 'source_id', ARGV[3])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
redis.call('HSET', KEYS[3], 'state', 'dead', 'finished_ms', now, 'last_error', ARGV[5], 'dlq_id', dlq_id)
redis.call('PEXPIRE', KEYS[3], tonumber(ARGV[7]))
return dlq_id
