--[[ fetch: read new entries for this consumer and mark their jobs running, in one round trip.

Non-blocking XREADGROUP for one queue, then the 'running' status of each job, stamped with the
Redis clock. Returning a flat array (not XREADGROUP's nested maps) also spares the client from
building a dict per entry. The job id is read from the envelope's leading "id" field, which the
client always writes first; an entry without one is returned as is and dead-lettered by the
worker. The read itself needs no memory; status records follow it and so are written even when
Redis is out of memory.

KEYS[1]   stream   qr:{q}:stream
ARGV[1]   consumer group
ARGV[2]   consumer name
ARGV[3]   most entries to read
ARGV[4]   (unused; kept for callers of the previous version)
ARGV[5]   status TTL in ms (0: do not record running state)
ARGV[6]   status key prefix   qr:{q}:job:
Returns   flat array: entry id, envelope (or false when the entry has no 'j' field), ...
Errors    NOGROUP when the stream or group is missing (the worker recreates it)
]]
local res = redis.pcall('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', tonumber(ARGV[3]),
  'STREAMS', KEYS[1], '>')
if type(res) == 'table' and res.err then return qr_error(res.err) end
local out = {}
if not res then
  return out
end
local ttl = tonumber(ARGV[5])
local now = nil
for _, entry in ipairs(res[1][2]) do
  local fields = entry[2]
  local body = false
  for k = 1, #fields, 2 do
    if fields[k] == 'j' then body = fields[k + 1] end
  end
  out[#out + 1] = entry[1]
  out[#out + 1] = body
  if body and ttl > 0 then
    local job_id = string.match(body, '^{"id":"([^"]+)"')
    if job_id then
      if now == nil then now = qr_now('') end
      local sk = ARGV[6] .. job_id
      redis.call('HSET', sk, 'state', 'running', 'started_ms', now, 'worker', ARGV[2])
      redis.call('PEXPIRE', sk, ttl)
    end
  end
end
return out
