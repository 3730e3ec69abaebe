--[[ cron_advance: move a schedule's last-fired marker forward, never back.

KEYS[1]   qr:cron:{<schedule>}:last
ARGV[1]   slot time (epoch ms) just enqueued
Returns   the previous value (false if none); the caller counts only slots beyond it, so each
          fire is counted once across every worker
]]
local prev = redis.call('GET', KEYS[1])
if (not prev) or tonumber(prev) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1])
end
return prev
