--[[ ack: finish a batch of entries this consumer owns: XACK + XDEL + final status, atomically.

An entry whose pending owner is not this consumer (its lease lapsed and another worker claimed
it) is refused and left untouched: a zombie's late ack must not remove another worker's claim.
An entry that is no longer pending at all (already acked: a retried call whose first reply was
lost, or the stream was flushed and refilled) is reported as gone.

The batch travels as one packed argument rather than 4 arguments per job: building a Redis
command costs the client per argument, and this call is on the hot path. Status keys are built
from the queue's key prefix inside the script; they share the stream's hash tag, so they live in
the same cluster slot. XACK comes before any write that needs memory, so acks go through when
Redis is out of memory (a script that has already written may finish its writes).

KEYS[1]   stream   qr:{q}:stream
ARGV[1]   consumer group
ARGV[2]   consumer name
ARGV[3]   now_ms, or "" to read the Redis clock (TIME)
ARGV[4]   result TTL in ms (status records of finished jobs; 0: keep none)
ARGV[5]   status key prefix   qr:{q}:job:
ARGV[6]   the batch: one record per entry, records separated by "\n", fields by "\t":
          stream entry id, job id, attempt, result JSON (may be empty). JSON never contains a
          raw newline or tab, so the separators are unambiguous.
Returns   array per record: 1 acked, -1 refused (another consumer owns it), -2 gone
Errors    NOGROUP when the stream or group is missing
]]
local now = qr_now(ARGV[3])
local stream, group, consumer, ttl, prefix = KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[4]), ARGV[5]
local out = {}
for record in string.gmatch(ARGV[6], '[^\n]+') do
  local id, job_id, attempt, result = string.match(record, '^([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$')
  local pend = redis.pcall('XPENDING', stream, group, id, id, 1)
  if pend.err then return qr_error(pend.err) end
  if #pend == 1 and pend[1][2] == consumer then
    redis.call('XACK', stream, group, id)
    redis.call('XDEL', stream, id)
    if ttl > 0 then
      local sk = prefix .. job_id
      if result ~= '' then
        redis.call('HSET', sk, 'state', 'succeeded', 'attempt', attempt, 'finished_ms', now, 'result', result)
      else
        redis.call('HSET', sk, 'state', 'succeeded', 'attempt', attempt, 'finished_ms', now)
      end
      redis.call('PEXPIRE', sk, ttl)
    end
    out[#out + 1] = 1
  elseif #pend == 0 then
    out[#out + 1] = -2
  else
    out[#out + 1] = -1
  end
end
return out
