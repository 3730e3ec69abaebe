--[[ job_status: everything needed to tell one job's state, read atomically.

A job waiting in or taken from the stream has a field in the queue's live index (job id ->
stream entry id) and usually no status hash: its state is where its entry is. The entry still
in the stream and pending for a consumer: running (on that consumer); in the stream, not
pending: queued. The status hash is written when the job is scheduled, retried, cancelled or
ends, and holds what the entry cannot tell (last error, progress, result). The caller merges
the two (Client.status): a hash that says the job ended or was cancelled wins. A job that
succeeded at its first try with nothing else recorded leaves a compact string instead of a
hash (see ack.lua); it is returned spelled out as the hash's fields.

KEYS[1]   stream        qr:{q}:stream
KEYS[2]   status record qr:{q}:job:<id>
ARGV[1]   consumer group
ARGV[2]   job id
Returns   {status hash as a flat array, envelope or false, consumer or false, stream entry id
          or false}
]]
local rec = qr_record_fields(KEYS[2])
local live = qr_live(KEYS[1])
local v = redis.call('HGET', live, ARGV[2])
if not v then return {rec, false, false} end
local e = qr_live_entry(v)
local found = redis.call('XRANGE', KEYS[1], e, e)
if #found == 0 then return {rec, false, false} end
local body = false
local fields = found[1][2]
for k = 1, #fields, 2 do
  if fields[k] == 'j' then body = fields[k + 1] end
end
local owner = false
local pend = redis.pcall('XPENDING', KEYS[1], ARGV[1], e, e, 1)
if type(pend) == 'table' and not pend.err and #pend == 1 then owner = pend[1][2] end
return {rec, body, owner, e}
