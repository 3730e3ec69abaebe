--[[ finish_cancelled: end an entry an operator cancelled: XACK + XDEL + status "cancelled".

Like ack, it acts only when this consumer owns the entry (a zombie's late call must not remove
another worker's claim) and reports an entry that is no longer pending as gone. The worker
removes the cancel request (another slot) once this returns.

KEYS[1]   stream            qr:{q}:stream
KEYS[2]   status record     qr:{q}:job:<id>
ARGV[1]   consumer group
ARGV[2]   consumer name
ARGV[3]   stream entry id
ARGV[4]   attempt
ARGV[5]   status TTL in ms (0: no record)
ARGV[6]   task name, ARGV[7] first enqueue time in ms (recorded unless "")
Returns   1 done, -1 refused (another consumer owns it), -2 gone
Errors    NOGROUP when the stream or group is missing
]]
local now = qr_now('')
local pend = redis.pcall('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if pend.err then return qr_error(pend.err) end
if #pend == 0 then return -2 end
if pend[1][2] ~= ARGV[2] then return -1 end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
redis.call('HDEL', qr_live(KEYS[1]), qr_key_job_id(KEYS[2]) or '')
local ttl = tonumber(ARGV[5])
if ttl > 0 then
  if not qr_record_hset(KEYS[2], 'state', 'cancelled', 'attempt', ARGV[4], 'finished_ms', now) then
    return 1  -- the job id already has a success record (see qr_record_hset): kept
  end
  qr_hset_given(KEYS[2], 'task', ARGV[6])
  qr_hset_given(KEYS[2], 'enqueued_ms', ARGV[7])
  redis.call('PEXPIRE', KEYS[2], ttl)
end
return 1
