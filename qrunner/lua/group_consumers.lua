--[[ group_consumers: the consumers of a queue's group, for the janitor.

XINFO CONSUMERS answers "ERR no such key" for a missing stream; this reports NOGROUP for a
missing stream or group alike, atomically, so callers see one typed fault.

KEYS[1]   stream   qr:{q}:stream
ARGV[1]   consumer group
Returns   flat array: per consumer, its name, pending entries and idle ms
Errors    NOGROUP when the stream or group is missing
]]
if redis.call('EXISTS', KEYS[1]) == 0 then
  return redis.error_reply('NOGROUP no stream ' .. KEYS[1])
end
local infos = redis.pcall('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
if infos.err then return qr_error(infos.err) end
local out = {}
for _, info in ipairs(infos) do
  local name, pending, idle
  for i = 1, #info, 2 do
    if info[i] == 'name' then name = info[i + 1]
    elseif info[i] == 'pending' then pending = info[i + 1]
    elseif info[i] == 'idle' then idle = info[i + 1] end
  end
  out[#out + 1] = name
  out[#out + 1] = pending
  out[#out + 1] = idle
end
return out
