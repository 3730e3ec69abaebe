--[[ mark_running: record that a batch of jobs has started, in one call per read batch.

KEYS[1]   stream   qr:{q}:stream (names the queue's slot; status keys share its hash tag)
ARGV[1]   started time in ms (worker clock is fine: status times are advisory)
ARGV[2]   status TTL in ms
ARGV[3]   status key prefix   qr:{q}:job:
ARGV[4]   job ids separated by "\n" (packed into one argument: it is on the hot path)
Returns   the number of records written
]]
local n = 0
for job_id in string.gmatch(ARGV[4], '[^\n]+') do
  local sk = ARGV[3] .. job_id
  redis.call('HSET', sk, 'state', 'running', 'started_ms', ARGV[1])
  redis.call('PEXPIRE', sk, ARGV[2])
  n = n + 1
end
return n
