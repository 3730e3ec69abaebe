--[[ reschedule: take an owned entry out of the stream and put its next envelope in the delayed set.

Used for retries after a failure (the envelope carries attempt + 1 and the error history) and for
deferrals that do not spend an attempt (rate limit, quiet hours). Refused when this consumer no
longer owns the entry. XACK/XDEL come first so the call goes through when Redis is out of memory
(the envelope only moves from the stream to the delayed set).

KEYS[1]   stream        qr:{q}:stream
KEYS[2]   delayed set   qr:{q}:delayed
KEYS[3]   status hash   qr:{q}:job:<id>
ARGV[1]   consumer group
ARGV[2]   consumer name
ARGV[3]   stream entry id
ARGV[4]   next envelope (JSON)
ARGV[5]   delay in ms from now
ARGV[6]   now_ms, or "" to read the Redis clock (TIME)
ARGV[7]   status TTL in ms (0: keep none)
ARGV[8]   status state to record ("retrying" or "scheduled")
ARGV[9]   attempt number of the next run
ARGV[10]  last error message ("" = leave as is)
ARGV[11]  task name, ARGV[12] first enqueue time in ms (recorded unless ""; a job due now has
          no status hash before this, see enqueue.lua)
Returns   due time in ms; -1 refused (another consumer owns it); -2 gone (no longer pending)
Errors    NOGROUP when the stream or group is missing
]]
local now = qr_now(ARGV[6])
local pend = redis.pcall('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if pend.err then return qr_error(pend.err) end
if #pend == 0 then return -2 end
if pend[1][2] ~= ARGV[2] then return -1 end
local due = now + tonumber(ARGV[5])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
redis.call('HDEL', qr_live(KEYS[1]), qr_key_job_id(KEYS[3]) or '')
redis.call('ZADD', KEYS[2], due, ARGV[4])
local ttl = tonumber(ARGV[7])
if ttl > 0 then
  if not qr_record_hset(KEYS[3], 'state', ARGV[8], 'attempt', ARGV[9], 'not_before_ms', due) then
    return due  -- the job id already has a success record (see qr_record_hset): kept
  end
  if ARGV[10] ~= '' then
    redis.call('HSET', KEYS[3], 'last_error', ARGV[10])
  end
  qr_hset_given(KEYS[3], 'task', ARGV[11])
  qr_hset_given(KEYS[3], 'enqueued_ms', ARGV[12])
  redis.call('PEXPIRE', KEYS[3], ttl)
end
return due
