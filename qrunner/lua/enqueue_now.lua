--[[ enqueue_now: add jobs due now to a queue's stream, each id at most once.

The common enqueue, with nothing to decide: no delay, no dedup key, no fairness key (see
enqueue.lua, which handles every other case). Each job costs its stream entry and its field in
the live index, as in enqueue.lua; the arguments are the two values the job needs, so a bulk
call carries two per job instead of six.

A job whose id is already known (its status record, done record or id marker exists, or the
live index holds it) is skipped, as in enqueue.lua: a call sent again after its reply was lost
writes nothing twice, whoever sends it again (qrunner's retry, redis-py's, a cluster client's,
a proxy's).

When every id in the call was drawn by the client for this call (80 random bits, never sent in
any other call; ARGV[1] = "1"), only the first id is looked up. A send of this call that ran
wrote its first job first, or nothing (the first refused write ends the script), so an unknown
first id means no send ran and no id of the call can exist: the rest are written without a
look-up. A known first id (a send ran, in full or up to a refused write) falls back to looking
up every id. A bulk call of 100 jobs thus makes one look-up instead of 100, for the same
guarantee. Any id the caller gave (ARGV[1] = "") is looked up, always.

Under memory pressure (maxmemory with noeviction) the first refused write returns the OOM error
with its code; the jobs before it in the call are written, as with enqueue.lua.

KEYS[1]        stream        qr:{q}:stream   (the live index qr:{q}:live, status records
               qr:{q}:job:<id>, the done hash qr:{q}:done and id markers qr:{q}:id:<id> are
               named from it: same hash tag)
ARGV[1]        "1" when every id was drawn by the client for this call, else ""
ARGV[2i]       job i's id
ARGV[2i+1]     job i's envelope (JSON)
Returns        flat array: per job, its id and 1 (enqueued) or 2 (this id was already
               enqueued: nothing written), the shape enqueue.lua returns
]]
local live, done = qr_live(KEYS[1]), qr_done(KEYS[1])
local prefix = string.sub(KEYS[1], 1, -7)  -- qr:{q}:
local function known(id)
  return redis.call('EXISTS', prefix .. 'job:' .. id, prefix .. 'id:' .. id) > 0
      or redis.call('HGET', done, id) or qr_is_live(live, KEYS[1], id)
end
local look = ARGV[1] ~= '1' or (#ARGV > 1 and known(ARGV[2]))
local out = {}
for i = 2, #ARGV, 2 do
  local id = ARGV[i]
  out[#out + 1] = id
  if look and known(id) then
    out[#out + 1] = 2
  else
    local r = redis.pcall('XADD', KEYS[1], '*', 'j', ARGV[i + 1])
    if type(r) == 'table' and r.err then return qr_error(r.err) end
    qr_live_add(live, id, r)
    out[#out + 1] = 1
  end
end
return out
