--[[ group_add: create a job group or add members to it, before those members are enqueued.

A group's record lives under its own hash tag (members may sit in different queues, so in
different cluster slots). Adding a member twice (a retried enqueue, a re-run parent that
enqueues the same child ids) counts it once: the total is the size of the member set. The
callback and member order are set by the first call only.

KEYS[1]   group hash     qr:grp:{g}
KEYS[2]   member set     qr:grp:{g}:members
KEYS[3]   done set       qr:grp:{g}:done
KEYS[4]   results hash   qr:grp:{g}:results
ARGV[1]   TTL of the group's keys in ms
ARGV[2]   callback spec (JSON, "" = none)
ARGV[3]   member order (JSON list of job ids, "" = none)
ARGV[4]   parent job id ("" = none; a fan-out's parent)
ARGV[5..] member job ids
Returns   the group's total (number of distinct members)
]]
local now = qr_now('')
local ttl = tonumber(ARGV[1])
redis.call('HSETNX', KEYS[1], 'created_ms', now)
if ARGV[2] ~= '' then redis.call('HSETNX', KEYS[1], 'callback', ARGV[2]) end
if ARGV[3] ~= '' then redis.call('HSETNX', KEYS[1], 'order', ARGV[3]) end
if ARGV[4] ~= '' then redis.call('HSETNX', KEYS[1], 'parent', ARGV[4]) end
for i = 5, #ARGV do
  redis.call('SADD', KEYS[2], ARGV[i])
end
for i = 1, 4 do
  redis.call('PEXPIRE', KEYS[i], ttl)
end
return redis.call('SCARD', KEYS[2])
