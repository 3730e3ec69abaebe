--[[ mark_running: record that a batch of jobs has started, in one call per batch.

Status records are advisory: when Redis is out of memory the first write is refused and the
script stops there, writing nothing, rather than failing the caller.

KEYS[1]   stream   qr:{q}:stream (names the queue's slot; status keys share its hash tag)
ARGV[1]   now_ms, or "" to read the Redis clock (TIME)
ARGV[2]   status TTL in ms
ARGV[3]   status key prefix   qr:{q}:job:
ARGV[4]   job ids separated by "\n" (packed into one argument: it is on the hot path)
ARGV[5]   consumer name (recorded as the job's worker)
Returns   the number of records written
]]
local now = qr_now(ARGV[1])
local n = 0
for job_id in string.gmatch(ARGV[4], '[^\n]+') do
  local sk = ARGV[3] .. job_id
  local r = redis.pcall('HSET', sk, 'state', 'running', 'started_ms', now, 'worker', ARGV[5])
  if type(r) == 'table' and r.err then return n end
  redis.call('PEXPIRE', sk, ARGV[2])
  n = n + 1
end
return n
