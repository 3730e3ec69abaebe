--[[ deadletter: move an owned entry to the dead-letter stream with its reason, atomically.

XACK/XDEL come before the XADD so a dead letter is written even when Redis is out of memory
(a script that has already written may finish).

KEYS[1]   stream              qr:{q}:stream
KEYS[2]   dead-letter stream  qr:{q}:dlq
KEYS[3]   status hash         qr:{q}:job:<id> (may be a placeholder when the entry had no id)
ARGV[1]   consumer group
ARGV[2]   consumer name
ARGV[3]   stream entry id
ARGV[4]   envelope to keep (JSON, error history included; raw bytes for a malformed entry)
ARGV[5]   reason (one line)
ARGV[6]   now_ms, or "" to read the Redis clock (TIME)
ARGV[7]   status TTL in ms (0: keep none)
ARGV[8]   task name ("" when unknown)
ARGV[9]   attempt, ARGV[10] first enqueue time in ms (recorded unless "")
Returns   the dead-letter entry id; -1 refused (another consumer owns it); -2 gone
Errors    NOGROUP when the stream or group is missing
]]
local now = qr_now(ARGV[6])
local pend = redis.pcall('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if pend.err then return qr_error(pend.err) end
if #pend == 0 then return -2 end
if pend[1][2] ~= ARGV[2] then return -1 end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
redis.call('HDEL', qr_live(KEYS[1]), qr_key_job_id(KEYS[3]) or '')
local dlq_id = redis.call('XADD', KEYS[2], '*', 'j', ARGV[4], 'reason', ARGV[5], 'failed_ms', now,
  'task', ARGV[8], 'source_id', ARGV[3])
local ttl = tonumber(ARGV[7])
-- A job id that already has a success record (see qr_record_hset) keeps it.
if ttl > 0 and qr_record_hset(KEYS[3], 'state', 'dead', 'finished_ms', now, 'last_error', ARGV[5],
    'dlq_id', dlq_id) then
  qr_hset_given(KEYS[3], 'task', ARGV[8])
  qr_hset_given(KEYS[3], 'attempt', ARGV[9])
  qr_hset_given(KEYS[3], 'enqueued_ms', ARGV[10])
  redis.call('PEXPIRE', KEYS[3], ttl)
end
return dlq_id
