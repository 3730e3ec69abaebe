--[[ fair_release: top up a queue's stream from its parked fair jobs, round-robin over keys.

Called by a worker before each read, so parked jobs enter the stream only as fast as they are
consumed and a key with a large backlog holds at most its turn of the stream, never all of it.

KEYS[1]   stream   qr:{q}:stream
KEYS[2]   ring     qr:{q}:fair:ring   (list of the per-key lists qr:{q}:fair:k:<key> with jobs)
ARGV[1]   consumer group
ARGV[2]   target: undelivered entries the stream may hold after the call
Returns   number of jobs moved into the stream
]]
--- @include "_fair_release"
return qr_fair_release(KEYS[1], ARGV[1], KEYS[2], tonumber(ARGV[2]))
