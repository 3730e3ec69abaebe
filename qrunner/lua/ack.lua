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

Acked entries leave the stream by XTRIM MINID where they can: every entry below the group's
oldest pending entry (with nothing pending, up to the newest entry acked here) was delivered
(delivery is in id order) and is no longer pending, so it was acked, and trimming to that bound
removes exactly acked entries, a whole listpack node at a time. XDEL finds each entry by
scanning its node: after the status write, it was the costliest command of an ack in profiles.
It is left for the entries of the batch above an older entry still running (a slow job holds
the bound back), for small batches, and for a user whose ACL refuses XTRIM.

The job leaves the queue's live index (qr:{q}:live) here, and its status record is written
once. Nothing was written for it when it started (a plain XREADGROUP: Consumer._read_one),
so this is the only status write of a job that succeeds at its first try; it has no record
yet, and gets the compact one: a field of the queue's done hash (qr:{q}:done), "1 <TAB>
finished ms <TAB> worker <TAB>" followed by the batch record's own attempt, task, enqueued ms,
run ms and result, as the client sent them (qr_record_fields spells it out for
job_status.lua). The whole batch's records go in one HSET, and one entry of the done log
(qr:{q}:done:log: the finished ms and the job ids) says when they end; qr_done_sweep removes
them once the TTL has passed, here (two log entries a call at most) and in the worker's sweep
(done_sweep.lua). A string key with its own TTL per job, as records were kept before, cost
Redis a SET per job and grew dearer as the keyspace and its expiry table filled: 0.6 µs a job
with 10,000 records, 1.5 µs with a million (benchmarks/results/2026-12-05-backlog-split.md).
A job that already has a record (it was scheduled or retried, or reported progress) gets its
fields written into that hash as before, so what the hash held (progress, last error) stays.

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
-- The success record of a job that has a status record already (it was scheduled, retried or
-- reported progress): the hash takes the fields, so what it held (progress, last error) stays.
-- A compact string under the key (older versions wrote them there) is replaced by `rec`.
local function qr_ack_record(sk, rest, now, consumer, ttl, rec)
  local attempt, task, enq, run, result = string.match(rest,
    '^([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$')
  if attempt == nil then
    -- A record short of fields (the client always sends them all): the entries are acked
    -- already, so the record must still be written rather than the script fail here.
    attempt, task, enq, run, result = string.match(rest, '^([^\t]*)'), '', '', '', ''
  end
  local started = string.format('%.0f', now - (tonumber(run) or 0))
  local written
  if result ~= '' then
    written = qr_hash_hset(sk, 'state', 'succeeded', 'task', task, 'attempt', attempt,
      'enqueued_ms', enq, 'started_ms', started, 'finished_ms', now, 'worker', consumer,
      'result', result)
  else
    written = qr_hash_hset(sk, 'state', 'succeeded', 'task', task, 'attempt', attempt,
      'enqueued_ms', enq, 'started_ms', started, 'finished_ms', now, 'worker', consumer)
  end
  if written then
    redis.call('PEXPIRE', sk, ttl)
  else
    redis.call('SET', sk, rec, 'PX', ttl)
  end
end

-- Compact records (job id, record, ...) as strings under the jobs' status keys with their own
-- TTL, the form older versions wrote and every reader still knows: where the done hash or its
-- log cannot take them. The entries are acked already, so the records must still be kept.
local function qr_done_as_strings(prefix, kv, ttl)
  for k = 1, #kv, 2 do
    if kv[k + 1] then redis.call('SET', prefix .. kv[k], kv[k + 1], 'PX', ttl) end
  end
end

local now = qr_now(ARGV[3])
local stream, group, consumer, ttl, prefix = KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[4]), ARGV[5]
local live = qr_live(stream)
local marker_ttl = tonumber(ARGV[7] or '') or 0
local marker_prefix = string.sub(prefix, 1, -5) .. 'id:'
-- Entries owned, found first; acked, deleted and dropped from the live index a few hundred at a
-- time (one variadic call each, not three calls per job: each call from Lua has a fixed cost);
-- the status records are written after every ack. The batch is read by one pattern into
-- parallel arrays (no table per job), and its lowest and highest entry ids are kept as
-- numbers for the ownership check below.
-- A record's fields after the job id stay one string (`rests`): the compact status record
-- takes them as they are, and only a job with a hash already needs them apart.
local ids, jobs, rests, n = {}, {}, {}, 0
local id_ms, id_seq = {}, {}
local lo_ms, lo_seq, lo_id, hi_ms, hi_seq, hi_id
local ranged = true
for id, ms, seq, job, rest in string.gmatch(ARGV[6],
    '(([^\t\n-]*)-?([^\t\n]*))\t([^\t\n]*)\t([^\n]*)') do
  n = n + 1
  ids[n], jobs[n], rests[n] = id, job, rest
  if ranged then
    ms, seq = tonumber(ms), tonumber(seq)
    id_ms[n], id_seq[n] = ms, seq
    if not (ms and seq) then
      ranged = false  -- an id that does not parse: look every entry up on its own
    elseif n == 1 then
      lo_ms, lo_seq, lo_id, hi_ms, hi_seq, hi_id = ms, seq, id, ms, seq, id
    elseif ms > hi_ms or (ms == hi_ms and seq > hi_seq) then
      hi_ms, hi_seq, hi_id = ms, seq, id
    elseif ms < lo_ms or (ms == lo_ms and seq < lo_seq) then
      lo_ms, lo_seq, lo_id = ms, seq, id
    end
  end
end
-- Which entries this consumer owns: for a batch, one XPENDING over the batch's id range
-- filtered to this consumer (its other entries in that range come back too; COUNT bounds
-- them), instead of one call per entry. An entry it does not return (owned by another
-- consumer, no longer pending, or past COUNT) is looked up on its own.
local mine = {}
if ranged and n >= 4 then
  local pend = redis.pcall('XPENDING', stream, group, lo_id, hi_id, 2 * n + 32, consumer)
  if pend.err then return qr_error(pend.err) end
  for _, p in ipairs(pend) do mine[p[1]] = true end
end
local out, owned, owned_jobs, finished = {}, {}, {}, {}
local low_ms, low_seq, top_ms, top_seq  -- the owned entries' lowest and highest ids
for i = 1, n do
  local id = ids[i]
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
    owned_jobs[#owned_jobs + 1] = jobs[i]
    finished[#finished + 1] = i
    if ranged then
      local ms, seq = id_ms[i], id_seq[i]
      if #owned == 1 or ms > top_ms or (ms == top_ms and seq > top_seq) then
        top_ms, top_seq = ms, seq
      end
      if #owned == 1 or ms < low_ms or (ms == low_ms and seq < low_seq) then
        low_ms, low_seq = ms, seq
      end
    end
  end
  out[i] = state
end
for i = 1, #owned, 500 do
  local last = math.min(i + 499, #owned)
  redis.call('XACK', stream, group, unpack(owned, i, last))
  redis.call('HDEL', live, unpack(owned_jobs, i, last))
end
-- The trim bound: the oldest entry still pending, or (nothing pending) the one just past the
-- newest entry acked here. Below it, every entry left in the stream was delivered (entries are
-- delivered in id order, and one this consumer owns was) and acked.
local deleting = owned
if ranged and #owned >= 8 then
  local summary = redis.call('XPENDING', stream, group)
  local bound_ms, bound_seq, bound_id = top_ms, top_seq + 1, nil
  if summary[1] > 0 then
    local ms, seq = string.match(summary[2], '^(%d+)-(%d+)$')
    bound_ms, bound_seq, bound_id = tonumber(ms), tonumber(seq), summary[2]
  end
  if bound_ms and bound_seq then
    -- A user whose ACL predates XTRIM here (docs/redis-acl.md) is refused it: the entries are
    -- then deleted one by one below, as before.
    local trimmed = (bound_ms > low_ms or (bound_ms == low_ms and bound_seq > low_seq))
      and redis.pcall('XTRIM', stream, 'MINID',
        bound_id or string.format('%.0f-%.0f', bound_ms, bound_seq))
    if trimmed and type(trimmed) ~= 'table' then
      deleting = {}
      for _, i in ipairs(finished) do
        local ms, seq = id_ms[i], id_seq[i]
        if ms > bound_ms or (ms == bound_ms and seq >= bound_seq) then
          deleting[#deleting + 1] = ids[i]
        end
      end
    end
  end
end
for i = 1, #deleting, 500 do
  redis.call('XDEL', stream, unpack(deleting, i, math.min(i + 499, #deleting)))
end
local head = '1\t' .. string.format('%.0f', now) .. '\t' .. consumer .. '\t'
if ttl > 0 and #finished > 0 then
  -- One EXISTS over a few hundred status keys says whether any of those jobs has a record
  -- already (nearly always none); the rest take their compact records in one HSET.
  local done = qr_done(stream)
  local logged = {string.format('%.0f', now)}
  for c = 1, #finished, 500 do
    local last = math.min(c + 499, #finished)
    local sks, kv = {}, {}
    for k = c, last do sks[#sks + 1] = prefix .. jobs[finished[k]] end
    local recorded = redis.call('EXISTS', unpack(sks)) > 0
    for k = c, last do
      local i, sk = finished[k], sks[k - c + 1]
      if recorded and redis.call('EXISTS', sk) == 1 then
        qr_ack_record(sk, rests[i], now, consumer, ttl, head .. rests[i])
      else
        kv[#kv + 1] = jobs[i]
        kv[#kv + 1] = head .. rests[i]
      end
    end
    -- (false: the done hash's key holds another type of value; something else wrote it.)
    if #kv > 0 and qr_hash_hset(done, unpack(kv)) then
      for k = 1, #kv, 2 do logged[#logged + 1] = kv[k] end
    elseif #kv > 0 then
      qr_done_as_strings(prefix, kv, ttl)
    end
  end
  if #logged > 1 then
    local r = redis.pcall('RPUSH', qr_done_log(done), table.concat(logged, '\t'))
    if type(r) == 'table' and r.err then
      -- No log to end them by: the records move to strings with their own TTL.
      for c = 2, #logged, 500 do
        local ids = {unpack(logged, c, math.min(c + 499, #logged))}
        local recs, kv = redis.call('HMGET', done, unpack(ids)), {}
        for k, id in ipairs(ids) do
          kv[#kv + 1] = id
          kv[#kv + 1] = recs[k]
        end
        redis.call('HDEL', done, unpack(ids))
        qr_done_as_strings(prefix, kv, ttl)
      end
    end
  end
  -- Records at the end of their TTL leave at the pace they came: two log entries a call at
  -- most (the worker's sweep takes the rest of an idle queue's, see done_sweep.lua). Under
  -- pcall: a log of another type must not fail the acks above (done_sweep.lua reports it).
  pcall(function() qr_done_sweep(done, now, ttl, 2) end)
elseif marker_ttl > 0 then
  for _, i in ipairs(finished) do
    redis.call('SET', marker_prefix .. jobs[i], 1, 'PX', marker_ttl)
  end
end
return out
