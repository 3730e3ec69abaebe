--[[ ensure_group: create a queue's stream and consumer group unless the group exists.

Checks first, so that it works when Redis is out of memory (XGROUP CREATE is refused under
maxmemory with noeviction even when the group exists) and tells "created" from "was there".

KEYS[1]   stream   qr:{q}:stream
ARGV[1]   consumer group
Returns   1 when it created the group (it had vanished, or the queue is new), 0 when it existed
]]
if redis.call('EXISTS', KEYS[1]) == 1 then
  for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
    for i = 1, #group, 2 do
      if group[i] == 'name' and group[i + 1] == ARGV[1] then return 0 end
    end
  end
end
local r = redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
if type(r) == 'table' and r.err then return qr_error(r.err) end
return 1
