--[[ reclaim: take over entries whose owner stopped renewing its lease (crashed or hung worker).

An entry idle for longer than the lease belongs to a consumer that has not heartbeated it, since
live workers reset the idle time of what they hold (extend_lease.lua). XAUTOCLAIM counts one more
delivery for each claimed entry; the caller dead-letters entries past the task's max_deliveries.
Entries deleted from the stream while still pending (possible only after an outside XDEL) carry
no data and are acknowledged away.

KEYS[1]   stream   qr:{q}:stream
ARGV[1]   consumer group
ARGV[2]   consumer name (the new owner)
ARGV[3]   minimum idle time in ms (the lease)
ARGV[4]   most entries to claim
Returns   flat array: per claimed entry, its id, its 'j' field (or false) and its delivery count
Errors    NOGROUP when the stream or group is missing
]]
local want = tonumber(ARGV[4])
local out = {}
local cursor = '0-0'
local rounds = 0
repeat
  local res = redis.pcall('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], cursor, 'COUNT', want)
  if res.err then return qr_error(res.err) end
  cursor = res[1]
  for _, entry in ipairs(res[2]) do
    if entry and entry[1] then
      local id, fields = entry[1], entry[2]
      if fields then
        local body = false
        for k = 1, #fields, 2 do
          if fields[k] == 'j' then body = fields[k + 1] end
        end
        local pend = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
        local deliveries = 1
        if #pend == 1 then deliveries = pend[1][4] end
        out[#out + 1] = id
        out[#out + 1] = body
        out[#out + 1] = deliveries
        want = want - 1
      else
        redis.call('XACK', KEYS[1], ARGV[1], id)
      end
    end
  end
  rounds = rounds + 1
until cursor == '0-0' or want <= 0 or rounds >= 10
return out
