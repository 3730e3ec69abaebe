--[[ enqueue: add one or more jobs to a queue, immediately or delayed, with optional dedup.

KEYS[1]        stream        qr:{q}:stream
KEYS[2]        delayed set   qr:{q}:delayed   (ZSET, score = due time in ms, Redis clock)
KEYS[2+2i-1]   status hash of job i   qr:{q}:job:<id>
KEYS[2+2i]     dedup key of job i     qr:{q}:uniq:<key>, or the status key again when the job has no key
ARGV[1]        now_ms, or "" to read the Redis clock (TIME)
ARGV[2]        status TTL in ms (0: keep no status records)
ARGV[3..]      per job, 6 values: job id, envelope (JSON), delay ms ("" = none),
               absolute due ms ("" = none), dedup TTL ms ("" = no dedup), task name
Returns        flat array: per job, the job id that holds the slot and 1 (enqueued) or 0
               (deduplicated: a job with the same key exists inside its window; nothing written)
]]
local now
if ARGV[1] ~= '' then
  now = tonumber(ARGV[1])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local status_ttl = tonumber(ARGV[2])
local out = {}
local n = (#ARGV - 2) / 6
for i = 0, n - 1 do
  local a = 3 + i * 6
  local id, env, delay, at, dedup_ttl, task = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], ARGV[a + 5]
  local status_key, uniq_key = KEYS[3 + 2 * i], KEYS[4 + 2 * i]
  local holder = false
  if dedup_ttl ~= '' then
    holder = redis.call('GET', uniq_key)
  end
  if holder then
    out[#out + 1] = holder
    out[#out + 1] = 0
  else
    if dedup_ttl ~= '' then
      redis.call('SET', uniq_key, id, 'PX', dedup_ttl)
    end
    local due = nil
    if at ~= '' then due = tonumber(at) elseif delay ~= '' then due = now + tonumber(delay) end
    if due ~= nil and due > now then
      redis.call('ZADD', KEYS[2], due, env)
      if status_ttl > 0 then
        redis.call('HSET', status_key, 'state', 'scheduled', 'task', task, 'attempt', 1,
          'enqueued_ms', now, 'not_before_ms', due)
      end
    else
      redis.call('XADD', KEYS[1], '*', 'j', env)
      if status_ttl > 0 then
        redis.call('HSET', status_key, 'state', 'queued', 'task', task, 'attempt', 1, 'enqueued_ms', now)
      end
    end
    if status_ttl > 0 then
      redis.call('PEXPIRE', status_key, status_ttl)
    end
    out[#out + 1] = id
    out[#out + 1] = 1
  end
end
return out
