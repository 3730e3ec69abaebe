--[[ ack: finish a batch of entries this consumer owns: XACK + XDEL + final status, atomically.

An entry whose pending owner is not this consumer (its lease lapsed and another worker claimed
it) is refused and left untouched: a zombie's late ack must not remove another worker's claim.

The batch travels as one packed argument rather than 4 arguments per job: building a Redis
command costs the client per argument, and this call is on the hot path. Status keys are built
from the queue's key prefix inside the script; they share the stream's hash tag, so they live in
the same cluster slot.

KEYS[1]   stream   qr:{q}:stream
ARGV[1]   consumer group
ARGV[2]   consumer name
ARGV[3]   now_ms, or "" to read the Redis clock (TIME)
ARGV[4]   result TTL in ms (status records of finished jobs; 0: keep none)
ARGV[5]   status key prefix   qr:{q}:job:
ARGV[6]   the batch: one record per entry, records separated by "\n", fields by "\t":
          stream entry id, job id, attempt, result JSON (may be empty). JSON never contains a
          raw newline or tab, so the separators are unambiguous.
Returns   array of 1 (acked) / 0 (refused: not owned by this consumer) per record
]]
local now
if ARGV[3] ~= '' then
  now = tonumber(ARGV[3])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local stream, group, consumer, ttl, prefix = KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[4]), ARGV[5]
local out = {}
for record in string.gmatch(ARGV[6], '[^\n]+') do
  local id, job_id, attempt, result = string.match(record, '^([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$')
  local pend = redis.call('XPENDING', stream, group, id, id, 1)
  if #pend == 1 and pend[1][2] == consumer then
    redis.call('XACK', stream, group, id)
    redis.call('XDEL', stream, id)
    local sk = prefix .. job_id
    if ttl <= 0 then
      -- status records are off
    elseif result ~= '' then
      redis.call('HSET', sk, 'state', 'succeeded', 'attempt', attempt, 'finished_ms', now, 'result', result)
    else
      redis.call('HSET', sk, 'state', 'succeeded', 'attempt', attempt, 'finished_ms', now)
    end
    if ttl > 0 then
      redis.call('PEXPIRE', sk, ttl)
    end
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
