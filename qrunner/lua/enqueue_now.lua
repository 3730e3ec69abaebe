--[[ enqueue_now: add jobs due now, with ids the client has just drawn, to a queue's stream.

The common enqueue, with nothing to decide: no delay, no dedup key, no fairness key, and ids
that cannot exist yet (drawn at random by the client, first send; see enqueue.lua, which handles
every other case, retries included). Each job costs its stream entry and its field in the live
index, as in enqueue.lua; the arguments are the two values the job needs, so a bulk call carries
two per job instead of eight.

Under memory pressure (maxmemory with noeviction) the first refused write returns the OOM error
with its code; the jobs before it in the call are written, as with enqueue.lua.

KEYS[1]        stream        qr:{q}:stream   (the live index qr:{q}:live is named from it)
ARGV[2i-1]     job i's id
ARGV[2i]       job i's envelope (JSON)
Returns        flat array: per job, its id and 1 (the shape enqueue.lua returns)
]]
local live = qr_live(KEYS[1])
local out = {}
for i = 1, #ARGV, 2 do
  local r = redis.pcall('XADD', KEYS[1], '*', 'j', ARGV[i + 1])
  if type(r) == 'table' and r.err then return qr_error(r.err) end
  redis.call('HSET', live, ARGV[i], r)
  out[#out + 1] = ARGV[i]
  out[#out + 1] = 1
end
return out
