--[[ group_finish: count one member of a group as finished (succeeded or dead-lettered).

Idempotent: the member's id enters the done set once, and only that first call bumps the
counters and stores its outcome. A member that re-runs after a crash (its first run counted,
its entry not yet acked) changes nothing. Every call on a complete group returns the callback
and the members' outcomes, so the caller can (re-)enqueue the callback under its deterministic
job id; the enqueue script refuses a known id, so the callback is enqueued exactly once.

KEYS[1]   group hash     qr:grp:{g}
KEYS[2]   member set     qr:grp:{g}:members
KEYS[3]   done set       qr:grp:{g}:done
KEYS[4]   results hash   qr:grp:{g}:results
ARGV[1]   member job id
ARGV[2]   "succeeded" or "dead"
ARGV[3]   the member's outcome (JSON)
ARGV[4]   TTL of the group's keys in ms
Returns   {first (1 counted now, 0 counted before), total, succeeded, failed, callback or
          false, outcomes or false}: callback and outcomes (a JSON list in member order) only
          once every member has finished; {-1} when the group record is gone (expired)
]]
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1} end
local ttl = tonumber(ARGV[4])
local first = redis.call('SADD', KEYS[3], ARGV[1])
if first == 1 then
  redis.call('SADD', KEYS[2], ARGV[1])
  if ARGV[2] == 'succeeded' then
    redis.call('HINCRBY', KEYS[1], 'succeeded', 1)
  else
    redis.call('HINCRBY', KEYS[1], 'failed', 1)
  end
  redis.call('HSET', KEYS[4], ARGV[1], ARGV[3])
  for i = 1, 4 do
    redis.call('PEXPIRE', KEYS[i], ttl)
  end
end
local total = redis.call('SCARD', KEYS[2])
local done = redis.call('SCARD', KEYS[3])
local rec = redis.call('HMGET', KEYS[1], 'succeeded', 'failed', 'callback', 'order')
local callback, outcomes = false, false
if done >= total and rec[3] then
  callback = rec[3]
  local order = cjson.decode(rec[4] or '[]')
  local parts = {}
  for i, id in ipairs(order) do
    parts[i] = redis.call('HGET', KEYS[4], id) or 'null'
  end
  outcomes = '[' .. table.concat(parts, ',') .. ']'
end
return {first, total, tonumber(rec[1] or 0), tonumber(rec[2] or 0), callback, outcomes}
