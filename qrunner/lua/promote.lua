--[[ promote: move due jobs from the delayed set into the stream, judged by the Redis clock.

KEYS[1]   delayed set   qr:{q}:delayed
KEYS[2]   stream        qr:{q}:stream
ARGV[1]   now_ms, or "" to read the Redis clock (TIME)
ARGV[2]   most jobs to move in this call
Returns   {moved, next_due_ms}: next_due_ms is the score of the earliest job still waiting, or -1
]]
local now
if ARGV[1] ~= '' then
  now = tonumber(ARGV[1])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
for _, env in ipairs(due) do
  redis.call('XADD', KEYS[2], '*', 'j', env)
  redis.call('ZREM', KEYS[1], env)
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local next_due = -1
if #nxt > 0 then next_due = tonumber(nxt[2]) end
return {#due, next_due}
