--[[ mark_running: record that a batch of jobs has started, in one call per read batch.

KEYS[1..n]  status hashes   qr:{q}:job:<id>
ARGV[1]     started time in ms (worker clock is fine: status times are advisory)
ARGV[2]     status TTL in ms
Returns     the number of records written
]]
for i = 1, #KEYS do
  redis.call('HSET', KEYS[i], 'state', 'running', 'started_ms', ARGV[1])
  redis.call('PEXPIRE', KEYS[i], ARGV[2])
end
return #KEYS
