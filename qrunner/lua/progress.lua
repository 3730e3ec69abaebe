--[[ progress: record a running job's progress in its status record.

Only an existing record is written: a job whose status records are off, or whose record has
expired, gets none, so a progress write never leaves a hash without a TTL behind.

KEYS[1]   status hash   qr:{q}:job:<id>
ARGV[1]   fraction done, 0..1 (decimal text)
ARGV[2]   meta as JSON ("" = none: any earlier meta is removed)
ARGV[3]   now_ms, or "" to read the Redis clock (TIME)
Returns   1 written, 0 no record to write to
]]
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local now = qr_now(ARGV[3])
redis.call('HSET', KEYS[1], 'progress', ARGV[1], 'progress_ms', now)
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[1], 'progress_meta', ARGV[2])
else
  redis.call('HDEL', KEYS[1], 'progress_meta')
end
return 1
