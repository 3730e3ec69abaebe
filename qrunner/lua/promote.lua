--[[ promote: move due jobs from the delayed set into the stream, judged by the Redis clock.

Each job leaves the delayed set before it enters the stream, so promotion goes on when Redis is
out of memory (a script that has already written may finish).

KEYS[1]   delayed set   qr:{q}:delayed
KEYS[2]   stream        qr:{q}:stream
ARGV[1]   now_ms, or "" to read the Redis clock (TIME)
ARGV[2]   most jobs to move in this call
Returns   {moved, wait_ms}: wait_ms is how long until the earliest job still waiting is due, on
          the Redis clock (so callers never compare it with their own clock), or -1 when none
]]
local now = qr_now(ARGV[1])
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local live = qr_live(KEYS[2])
for _, env in ipairs(due) do
  redis.call('ZREM', KEYS[1], env)
  local eid = redis.call('XADD', KEYS[2], '*', 'j', env)
  local job_id = qr_job_id(env)
  if job_id then qr_live_add(live, job_id, eid) end
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local wait = -1
if #nxt > 0 then wait = math.max(0, tonumber(nxt[2]) - now) end
return {#due, wait}
