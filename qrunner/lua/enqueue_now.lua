--[[ enqueue_now: add jobs due now to a queue's stream, each id at most once.

The common enqueue, with nothing to decide: no delay, no dedup key, no fairness key (see
enqueue.lua, which handles every other case). Each job costs its stream entry and its field in
the live index, as in enqueue.lua; the arguments are the two values the job needs, so a bulk
call carries two per job instead of six.

A job whose id is already known (its status record or id marker exists, or the live index holds
it) is skipped, as in enqueue.lua: a call sent again after its reply was lost writes nothing
twice, whoever sends it again (qrunner's retry, redis-py's, a cluster client's, a proxy's).

Under memory pressure (maxmemory with noeviction) the first refused write returns the OOM error
with its code; the jobs before it in the call are written, as with enqueue.lua.

KEYS[1]        stream        qr:{q}:stream   (the live index qr:{q}:live, status records
               qr:{q}:job:<id> and id markers qr:{q}:id:<id> are named from it: same hash tag)
ARGV[2i-1]     job i's id
ARGV[2i]       job i's envelope (JSON)
Returns        flat array: per job, its id and 1 (enqueued) or 2 (this id was already
               enqueued: nothing written), the shape enqueue.lua returns
]]
local live = qr_live(KEYS[1])
local prefix = string.sub(KEYS[1], 1, -7)  -- qr:{q}:
local out = {}
for i = 1, #ARGV, 2 do
  local id = ARGV[i]
  out[#out + 1] = id
  if redis.call('EXISTS', prefix .. 'job:' .. id, prefix .. 'id:' .. id) > 0
      or qr_is_live(live, KEYS[1], id) then
    out[#out + 1] = 2
  else
    local r = redis.pcall('XADD', KEYS[1], '*', 'j', ARGV[i + 1])
    if type(r) == 'table' and r.err then return qr_error(r.err) end
    redis.call('HSET', live, id, r)
    out[#out + 1] = 1
  end
end
return out
