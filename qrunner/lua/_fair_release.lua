-- Included by the fairness scripts (enqueue_fair.lua, fair_release.lua).

-- Move parked fair jobs into the stream, one per key in ring order (round-robin), until the
-- stream holds `target` undelivered entries or nothing is parked. Undelivered = XLEN minus the
-- group's pending count (acked entries are deleted, so the rest were never read). Each job
-- leaves its key's list in the same step as it enters the stream. Returns the number moved.
local function qr_fair_release(stream, group, ring, target)
  local unread = redis.call('XLEN', stream)
  local summary = redis.pcall('XPENDING', stream, group)
  if type(summary) == 'table' and not summary.err then
    unread = unread - tonumber(summary[1])
  end
  local moved = 0
  while unread < target do
    local list = redis.call('LPOP', ring)
    if not list then break end
    local env = redis.call('LPOP', list)
    if env then
      local eid = redis.call('XADD', stream, '*', 'j', env)
      local job_id = qr_job_id(env)
      if job_id then qr_live_add(qr_live(stream), job_id, eid) end
      unread = unread + 1
      moved = moved + 1
    end
    if redis.call('LLEN', list) > 0 then
      redis.call('RPUSH', ring, list)
    end
  end
  return moved
end
