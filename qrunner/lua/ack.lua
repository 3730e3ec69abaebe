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

The job leaves the queue's live index (qr:{q}:live) here, and its status hash is written once,
compact: state, attempt, finish time, worker and result. Nothing was written for it when it
started (see fetch.lua), so this is the only status write of a job that succeeds first time.

KEYS[1]   stream   qr:{q}:stream
ARGV[1]   consumer group
ARGV[2]   consumer name
ARGV[3]   now_ms, or "" to read the Redis clock (TIME)
ARGV[4]   result TTL in ms (status records of finished jobs; 0: keep none)
ARGV[5]   status key prefix   qr:{q}:job:
ARGV[6]   the batch: one record per entry, records separated by "\n", fields by "\t":
          stream entry id, job id, attempt, task, enqueued ms, run time in ms, result JSON (may
          be empty). JSON never contains a raw newline or tab, so the separators are
          unambiguous. The start time recorded is the Redis clock minus the run time.
ARGV[7]   id-marker TTL in ms, used when ARGV[4] is 0: the finished job's id is then kept as a
          marker qr:{q}:id:<id> for that long, so a retried enqueue of it is still skipped
Returns   array per record: 1 acked, -1 refused (another consumer owns it), -2 gone
Errors    NOGROUP when the stream or group is missing
]]
local now = qr_now(ARGV[3])
local stream, group, consumer, ttl, prefix = KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[4]), ARGV[5]
local live = qr_live(stream)
local marker_ttl = tonumber(ARGV[7] or '') or 0
local marker_prefix = string.sub(prefix, 1, -5) .. 'id:'
-- Entries owned, found first; acked, deleted and dropped from the live index a few hundred at a
-- time (one variadic call each, not three calls per job: each call from Lua has a fixed cost);
-- the status records are written after every ack.
local records, lo, hi = {}, nil, nil
for record in string.gmatch(ARGV[6], '[^\n]+') do
  local r = {string.match(record,
    '^(([^\t-]*)-?([^\t]*))\t([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$')}
  -- r: entry id, its ms, its seq, job id, attempt, task, enqueued ms, run ms, result
  local ms, seq = tonumber(r[2]), tonumber(r[3])
  r[2], r[3] = ms, seq
  records[#records + 1] = r
  if ms and seq and lo ~= false then
    if not lo or ms < lo[1] or (ms == lo[1] and seq < lo[2]) then lo = {ms, seq, r[1]} end
    if not hi or ms > hi[1] or (ms == hi[1] and seq > hi[2]) then hi = {ms, seq, r[1]} end
  else
    lo = false  -- an id that does not parse: look every entry up on its own
  end
end
-- Which entries this consumer owns: for a batch, one XPENDING over the batch's id range
-- filtered to this consumer (its other entries in that range come back too; COUNT bounds
-- them), instead of one call per entry. An entry it does not return (owned by another
-- consumer, no longer pending, or past COUNT) is looked up on its own.
local mine = {}
if lo and #records >= 4 then
  local pend = redis.pcall('XPENDING', stream, group, lo[3], hi[3], 2 * #records + 32, consumer)
  if pend.err then return qr_error(pend.err) end
  for _, p in ipairs(pend) do mine[p[1]] = true end
end
local out, owned, owned_jobs, finished = {}, {}, {}, {}
for _, r in ipairs(records) do
  local id = r[1]
  local state = 1
  if not mine[id] then
    local pend = redis.pcall('XPENDING', stream, group, id, id, 1)
    if pend.err then return qr_error(pend.err) end
    if #pend == 0 then
      state = -2
    elseif pend[1][2] ~= consumer then
      state = -1
    end
  end
  if state == 1 then
    owned[#owned + 1] = id
    owned_jobs[#owned_jobs + 1] = r[4]
    finished[#finished + 1] = {r[4], r[5], r[6], r[7], r[8], r[9]}
  end
  out[#out + 1] = state
end
for i = 1, #owned, 500 do
  local last = math.min(i + 499, #owned)
  redis.call('XACK', stream, group, unpack(owned, i, last))
  redis.call('XDEL', stream, unpack(owned, i, last))
  redis.call('HDEL', live, unpack(owned_jobs, i, last))
end
for _, f in ipairs(finished) do
  local job_id, attempt, task, enqueued, run_ms, result = f[1], f[2], f[3], f[4], f[5], f[6]
  if ttl > 0 then
    local sk = prefix .. job_id
    if result ~= '' then
      redis.call('HSET', sk, 'state', 'succeeded', 'task', task, 'attempt', attempt,
        'enqueued_ms', enqueued, 'started_ms', now - tonumber(run_ms), 'finished_ms', now,
        'worker', consumer, 'result', result)
    else
      redis.call('HSET', sk, 'state', 'succeeded', 'task', task, 'attempt', attempt,
        'enqueued_ms', enqueued, 'started_ms', now - tonumber(run_ms), 'finished_ms', now,
        'worker', consumer)
    end
    redis.call('PEXPIRE', sk, ttl)
  elseif marker_ttl > 0 then
    redis.call('SET', marker_prefix .. job_id, 1, 'PX', marker_ttl)
  end
end
return out
