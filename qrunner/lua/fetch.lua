--[[ fetch: read new entries for this consumer, in one round trip.

Non-blocking XREADGROUP for one queue. Nothing is written per job: a job is running while its
entry is pending (job_status.lua reads it there), so starting a job costs no status write.
Returning a flat array (not XREADGROUP's nested maps) also spares the client from building a
dict per entry. An entry without a 'j' field is returned with false and dead-lettered by the
worker. The read needs no memory, so it works when Redis is out of memory.

KEYS[1]   stream   qr:{q}:stream
ARGV[1]   consumer group
ARGV[2]   consumer name
ARGV[3]   most entries to read
ARGV[4..6] (unused; kept for callers of earlier versions)
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
for _, entry in ipairs(res[1][2]) do
  local fields = entry[2]
  local body = false
  for k = 1, #fields, 2 do
    if fields[k] == 'j' then body = fields[k + 1] end
  end
  out[#out + 1] = entry[1]
  out[#out + 1] = body
end
return out
