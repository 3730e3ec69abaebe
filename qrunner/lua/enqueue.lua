--[[ enqueue: add one or more jobs to a queue, immediately or delayed, with optional dedup.

Job ids are made by the client before sending, and an id is written at most once: a job whose id
record already exists, whose compact success record is in the done hash (qr:{q}:done, see
ack.lua) or whose id is in the live index, is skipped. A call sent again after its reply was
lost (a reset connection, a timeout) therefore never enqueues twice, whichever layer sends it
again: qrunner's retry, redis-py's own, a cluster client's or a proxy's. The check is
three reads per job and is never skipped: an earlier version skipped it on the first send of ids
the client had just drawn, and redis-py, retrying that very call, wrote every job twice.

A job due now costs one field in the queue's live index (qr:{q}:live, job id -> stream entry
id) and nothing else: its state is where its entry is (unread: queued; pending: running, see
job_status.lua), and the worker writes a compact status record only when the job ends, in the
same call as the ack. The live field is the id record while the job is in the stream; after it,
the done record or status hash (or, with status records off, a marker kept for the id-marker
TTL). A delayed job's id record is its 'scheduled' status hash (or the marker).

Under memory pressure (maxmemory with noeviction) the first write is refused and nothing is
written; the OOM error reaches the caller with its code.

KEYS[1]        stream        qr:{q}:stream
KEYS[2]        delayed set   qr:{q}:delayed   (ZSET, score = due time in ms, Redis clock)
KEYS[2+2i-1]   id record of job i: status hash qr:{q}:job:<id>, or marker qr:{q}:id:<id>
KEYS[2+2i]     dedup key of job i     qr:{q}:uniq:<key>, or the id record again when no key
ARGV[1]        now_ms, or "" to read the Redis clock (TIME)
ARGV[2]        status TTL in ms (0: keep no status records; the id record is then a marker)
ARGV[3]        id-marker TTL in ms (used when ARGV[2] is 0)
ARGV[4..]      per job, 6 values: job id, envelope (JSON), delay ms ("" = none),
               absolute due ms ("" = none), dedup TTL ms ("" = no dedup), task name
Returns        flat array: per job, the job id that holds the slot and 1 (enqueued), 0
               (deduplicated: a job with the same key exists inside its window) or 2 (this id
               was already enqueued); 0 and 2 wrote nothing
]]
local now = nil  -- read once, when a delayed job or a status record needs it
local status_ttl = tonumber(ARGV[2])
local marker_ttl = tonumber(ARGV[3])
local live, done = qr_live(KEYS[1]), qr_done(KEYS[1])
local out = {}
local n = (#ARGV - 3) / 6
for i = 0, n - 1 do
  local a = 4 + i * 6
  local id, env, delay, at, dedup_ttl, task = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], ARGV[a + 5]
  local id_key, uniq_key = KEYS[3 + 2 * i], KEYS[4 + 2 * i]
  local holder = false
  if dedup_ttl ~= '' then
    holder = redis.call('GET', uniq_key)
  end
  if holder then
    out[#out + 1] = holder
    out[#out + 1] = 0
  elseif redis.call('EXISTS', id_key) == 1 or redis.call('HGET', done, id)
      or qr_is_live(live, KEYS[1], id) then
    out[#out + 1] = id
    out[#out + 1] = 2
  else
    local due = nil
    if at ~= '' or delay ~= '' then now = now or qr_now(ARGV[1]) end
    if at ~= '' then due = tonumber(at) elseif delay ~= '' then due = now + tonumber(delay) end
    local r
    if due ~= nil and due > now then
      r = redis.pcall('ZADD', KEYS[2], due, env)
    else
      due = nil
      r = redis.pcall('XADD', KEYS[1], '*', 'j', env)
    end
    if type(r) == 'table' and r.err then return qr_error(r.err) end
    if dedup_ttl ~= '' then
      redis.call('SET', uniq_key, id, 'PX', dedup_ttl)
    end
    if due == nil then
      qr_live_add(live, id, r)
    elseif status_ttl > 0 then
      redis.call('HSET', id_key, 'state', 'scheduled', 'task', task, 'attempt', 1,
        'enqueued_ms', now, 'not_before_ms', due)
      redis.call('PEXPIRE', id_key, status_ttl)
    else
      redis.call('SET', id_key, 1, 'PX', marker_ttl)
    end
    out[#out + 1] = id
    out[#out + 1] = 1
  end
end
return out
