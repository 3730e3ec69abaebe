--[[ done_sweep: remove the compact success records whose result TTL has passed.

The ack writes them to the queue's done hash and logs each call's job ids with its time (see
ack.lua), and removes the records of two expired log entries a call as it goes; this takes the
rest, for a queue whose workers have nothing more to ack. A record written again since its log
entry (a newer finished ms) stays.

KEYS[1]   done hash   qr:{q}:done   (its log qr:{q}:done:log is named from it: same hash tag)
ARGV[1]   now_ms, or "" to read the Redis clock (TIME)
ARGV[2]   result TTL in ms (the one the acks were given)
ARGV[3]   how many log entries to take at most
Returns   {records removed, 1 when log entries at the end of their TTL remain, else 0}
]]
local now = qr_now(ARGV[1])
local ttl = qr_int(ARGV[2], 1, 'ttl')
local entries = qr_int(ARGV[3], 1, 'entries')
local removed, more = qr_done_sweep(KEYS[1], now, ttl, entries)
return {removed, more and 1 or 0}
