--[[ mark_cancelled: record that a job no worker has taken yet is cancelled.

The worker that takes its entry later acks it as cancelled (finish_cancelled.lua). A job that
succeeded since its state was read keeps its success record (see qr_record_hset).

KEYS[1]   status hash   qr:{q}:job:<id>   (the done hash qr:{q}:done is named from it)
Returns   1 marked, 0 the job has succeeded
]]
if qr_record_hset(KEYS[1], 'state', 'cancelled') then return 1 end
return 0
