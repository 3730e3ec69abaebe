--[[ progress: record a running job's progress in its status record.

A running job due now usually has no status hash yet (see enqueue.lua): the first report
creates it with the status TTL. With no TTL given (status records off) only an existing record
is written, so a progress write never leaves a hash without a TTL behind.

KEYS[1]   status hash   qr:{q}:job:<id>
ARGV[1]   fraction done, 0..1 (decimal text)
ARGV[2]   meta as JSON ("" = none: any earlier meta is removed)
ARGV[3]   now_ms, or "" to read the Redis clock (TIME)
ARGV[4]   status TTL in ms for a record this call creates ("" or 0: create none)
Returns   1 written, 0 no record to write to (or the job has already succeeded)
]]
local ttl = tonumber(ARGV[4] or '') or 0
local exists = redis.call('EXISTS', KEYS[1]) == 1
if not exists and ttl <= 0 then return 0 end
local now = qr_now(ARGV[3])
-- A job whose compact success record is written has ended: its progress is over.
if not qr_record_hset(KEYS[1], 'progress', ARGV[1], 'progress_ms', now) then return 0 end
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[1], 'progress_meta', ARGV[2])
else
  redis.call('HDEL', KEYS[1], 'progress_meta')
end
if not exists then redis.call('PEXPIRE', KEYS[1], ttl) end
return 1
