--[[ enqueue_fair: park jobs of a task with a fairness key, then top up the stream.

Like enqueue.lua for jobs due now, except that each job goes to its key's list
(qr:{q}:fair:k:<key>) instead of the stream; a key whose list was empty joins the ring. Then the
stream is topped up round-robin (see _fair_release.lua) to the backlog the queue's workers
asked for, so an idle worker wakes at once. Ids are written at most once and dedup keys are
honoured exactly as in enqueue.lua.

KEYS[1]        stream          qr:{q}:stream
KEYS[2]        ring            qr:{q}:fair:ring
KEYS[3]        backlog target  qr:{q}:fair:backlog (string; missing = ARGV[4])
KEYS[3+3i-2]   id record of job i (status hash, or marker when status records are off)
KEYS[3+3i-1]   dedup key of job i, or the id record again when no key
KEYS[3+3i]     the list of job i's fairness key   qr:{q}:fair:k:<key>
ARGV[1]        now_ms, or "" to read the Redis clock (TIME)
ARGV[2]        status TTL in ms (0: keep no status records; the id record is then a marker)
ARGV[3]        id-marker TTL in ms (used when ARGV[2] is 0)
ARGV[4]        backlog target when KEYS[3] is missing
ARGV[5]        consumer group
ARGV[6..]      per job, 4 values: job id, envelope (JSON), dedup TTL ms ("" = no dedup), task
Returns        flat array as enqueue.lua: per job, the id holding the slot and 1 (parked),
               0 (deduplicated) or 2 (id already enqueued)
]]
--- @include "_fair_release"
local now = qr_now(ARGV[1])
local status_ttl = tonumber(ARGV[2])
local marker_ttl = tonumber(ARGV[3])
local out = {}
local n = (#ARGV - 5) / 4
for i = 0, n - 1 do
  local a = 6 + i * 4
  local id, env, dedup_ttl, task = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  local id_key, uniq_key, list = KEYS[4 + 3 * i], KEYS[5 + 3 * i], KEYS[6 + 3 * i]
  local holder = false
  if dedup_ttl ~= '' then
    holder = redis.call('GET', uniq_key)
  end
  if holder then
    out[#out + 1] = holder
    out[#out + 1] = 0
  elseif redis.call('EXISTS', id_key) == 1 or redis.call('HGET', qr_done(KEYS[1]), id) then
    out[#out + 1] = id
    out[#out + 1] = 2
  else
    local r = redis.pcall('RPUSH', list, env)
    if type(r) == 'table' and r.err then return qr_error(r.err) end
    if r == 1 then
      redis.call('RPUSH', KEYS[2], list)
    end
    if dedup_ttl ~= '' then
      redis.call('SET', uniq_key, id, 'PX', dedup_ttl)
    end
    if status_ttl > 0 then
      redis.call('HSET', id_key, 'state', 'queued', 'task', task, 'attempt', 1, 'enqueued_ms', now)
      redis.call('PEXPIRE', id_key, status_ttl)
    else
      redis.call('SET', id_key, 1, 'PX', marker_ttl)
    end
    out[#out + 1] = id
    out[#out + 1] = 1
  end
end
local target = tonumber(redis.call('GET', KEYS[3]) or ARGV[4])
qr_fair_release(KEYS[1], ARGV[5], KEYS[2], target)
return out
