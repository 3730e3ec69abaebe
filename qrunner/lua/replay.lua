--[[ replay: move one dead-lettered job back into its queue's stream, atomically.

KEYS[1]   dead-letter stream  qr:{q}:dlq
KEYS[2]   stream              qr:{q}:stream
KEYS[3]   status hash         qr:{q}:job:<id>
ARGV[1]   dead-letter entry id
ARGV[2]   envelope to enqueue (attempt reset, history kept)
ARGV[3]   status TTL in ms
ARGV[4]   task name
Returns   the new stream entry id, or false when the dead-letter entry no longer exists
]]
local found = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #found == 0 then
  return false
end
local sid = redis.call('XADD', KEYS[2], '*', 'j', ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[1])
qr_live_add(qr_live(KEYS[2]), qr_key_job_id(KEYS[3]) or '', sid)
if qr_record_hset(KEYS[3], 'state', 'queued', 'task', ARGV[4], 'attempt', 1) then
  redis.call('HDEL', KEYS[3], 'finished_ms', 'dlq_id')
  redis.call('PEXPIRE', KEYS[3], tonumber(ARGV[3]))
end
return sid
