-- Shared by every script: qrunner/scripts.py puts in front of each one the functions of this
-- file it calls (each `local function` runs, making a closure, every time the script runs).
-- Every name here starts with qr_: that is how a script's calls are found.

-- The Redis clock in ms, or `given` when the caller passed a time ("" = read TIME).
local function qr_now(given)
  if given ~= nil and given ~= '' then return tonumber(given) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The server's error code (OOM, NOGROUP, WRONGTYPE, ...) of a failed redis.pcall's message:
-- Redis 6.2 puts the script location first ("@user_script: 3: -OOM ..."), Redis 7 and Valkey
-- do not. Nil when the message carries none.
local function qr_error_code(err)
  return string.match(err, '^(%u+) ') or string.match(err, ': %-(%u+) ')
end

-- The error reply for a failed redis.pcall, with the server's error code in front where
-- clients read it.
local function qr_error(err)
  if string.match(err, '^%u+ ') then return redis.error_reply(err) end
  return redis.error_reply((qr_error_code(err) or 'ERR') .. ' ' .. err)
end

-- Integer maths for the token buckets, exact below 2^53 (a double quotient can be off by one).
local function qr_ceil_div(a, b)
  local q = math.floor(a / b)
  while q * b < a do q = q + 1 end
  while (q - 1) * b >= a do q = q - 1 end
  return q
end

local function qr_floor_div(a, b)
  local q = math.floor(a / b)
  while q * b > a do q = q - 1 end
  while (q + 1) * b <= a do q = q + 1 end
  return q
end

-- ARGV value as an integer of at least `low`; anything else is the caller's bug.
local function qr_int(value, low, what)
  local n = tonumber(value)
  if n == nil or n < low or n ~= math.floor(n) then
    error({err = "QRBADARGS " .. what .. " must be an integer >= " .. low .. ", got '" ..
      tostring(value) .. "'"})
  end
  return n
end

-- A token-bucket window's credit and time as of `now` (the same maths as
-- qrunner/tokenbucket.py): a missing window is full; credit accrues `tokens` per ms up to `full`.
local function qr_window(key, full, now, tokens)
  local state = redis.call("HMGET", key, "credit", "ts")
  if state[1] == false or state[2] == false then
    return full, now
  end
  local credit, ts = tonumber(state[1]), tonumber(state[2])
  if now <= ts then
    return math.min(credit, full), ts
  end
  return math.min(full, credit + (now - ts) * tokens), now
end

-- The queue's live index (job id -> stream entry id of each job waiting in or taken from the
-- stream, status records on), named from the stream key: qr:{q}:stream -> qr:{q}:live. Same
-- hash tag, same cluster slot.
local function qr_live(stream)
  return string.sub(stream, 1, -7) .. 'live'
end

-- The job id at the head of an envelope, or nil: an object's first key is always "id", a
-- compact envelope [id, task, payload] starts with it.
local function qr_job_id(env)
  return string.match(env, '^{"id":"([^"]+)"') or string.match(env, '^%["([^"]+)"')
end

-- The job id at the end of a status key qr:{q}:job:<id>.
local function qr_key_job_id(status_key)
  return string.match(status_key, ':job:(.+)$')
end

-- The live index holds each stream entry id packed: the ms in 11 hex digits, then the seq in
-- hex ("1796129597928-87" -> "1a231aaa9e857"). Redis keeps a hash field's value in an
-- allocation of 8, 16, 24... bytes with one byte of header and a terminator: up to 14
-- characters fit in 16 bytes, where the 15 to 17 of the decimal form took 24 (of the ~98
-- bytes the index cost per queued job, with the field and its table entry). An id that does
-- not pack in 14 (a seq from 4096 within one ms, or an ms of other than 13 digits) is kept as
-- it is; so is an id written before values were packed: both still have their '-'.
local function qr_live_pack(eid)
  -- A 13-digit ms (the years 2001 to 2286, all below 16^11) and a seq of 1 to 4 digits.
  if string.find(eid, '-', 1, true) ~= 14 or #eid > 18 then return eid end
  local seq = tonumber(string.sub(eid, 15))
  if seq >= 4096 then return eid end
  return string.format('%011x%x', tonumber(string.sub(eid, 1, 13)), seq)
end

-- The stream entry id a live index value stands for (see qr_live_pack).
local function qr_live_entry(v)
  if string.find(v, '-', 1, true) then return v end
  return string.format('%.0f-%.0f', tonumber(string.sub(v, 1, 11), 16),
    tonumber(string.sub(v, 12), 16))
end

-- Record in the live index that job `id` waits as stream entry `eid`.
local function qr_live_add(live, id, eid)
  redis.call('HSET', live, id, qr_live_pack(eid))
end

-- Whether job `id` is in the live index with its stream entry still there (an entry removed
-- from outside, e.g. by XTRIM, leaves a stale field: it is dropped here).
local function qr_is_live(live, stream, id)
  local v = redis.call('HGET', live, id)
  if not v then return false end
  local e = qr_live_entry(v)
  if #redis.call('XRANGE', stream, e, e) > 0 then return true end
  redis.call('HDEL', live, id)
  return false
end

-- HSET key field value, unless value is missing or "" (optional ARGV of newer callers).
local function qr_hset_given(key, field, value)
  if value ~= nil and value ~= '' then redis.call('HSET', key, field, value) end
end

-- The queue's done hash, named from the stream key (qr:{q}:stream -> qr:{q}:done): job id ->
-- the compact record of a job that succeeded at its first try with nothing else recorded (see
-- ack.lua), "1 <TAB> finished ms <TAB> worker <TAB> attempt <TAB> task <TAB> enqueued ms <TAB>
-- run ms <TAB> result". Same hash tag, same cluster slot.
local function qr_done(stream)
  return string.sub(stream, 1, -7) .. 'done'
end

-- The done hash of the queue a status key qr:{q}:job:<id> belongs to.
local function qr_done_of(status_key)
  return (string.match(status_key, '^(.-):job:') or '') .. ':done'
end

-- The done hash's log (qr:{q}:done:log), oldest first: one entry per ack call that wrote
-- records, "finished ms <TAB> job id <TAB> job id ...", which is how records find their end.
local function qr_done_log(done)
  return done .. ':log'
end

-- The compact success record of the job of status key `key` in its queue's done hash, or nil.
local function qr_done_record(key)
  local id = qr_key_job_id(key)
  return id and redis.call('HGET', qr_done_of(key), id) or nil
end

-- Remove the done records of the log's entries at least `ttl` ms old, up to `entries` entries;
-- returns how many records went, and whether expired entries remain. A record written again
-- since (a newer finished ms) stays.
local function qr_done_sweep(done, now, ttl, entries)
  local log, cutoff, removed, taken = qr_done_log(done), now - ttl, 0, 0
  while true do
    local head = redis.call('LRANGE', log, 0, 0)[1]
    if not head then return removed, false end
    local ms = tonumber(string.match(head, '^(%d+)'))
    if ms and ms > cutoff then return removed, false end
    if taken == entries then return removed, true end
    taken = taken + 1
    redis.call('LPOP', log)
    local ids = {}
    for id in string.gmatch(head, '\t([^\t]+)') do ids[#ids + 1] = id end
    for i = 1, #ids, 500 do
      local chunk = {unpack(ids, i, math.min(i + 499, #ids))}
      local recs, gone = redis.call('HMGET', done, unpack(chunk)), {}
      for k, rec in ipairs(recs) do
        local finished = rec and tonumber(string.match(rec, '^1\t(%d+)'))
        if rec and (finished == nil or finished <= cutoff) then gone[#gone + 1] = chunk[k] end
      end
      if #gone > 0 then removed = removed + redis.call('HDEL', done, unpack(gone)) end
    end
  end
end

-- HSET on a hash (a job's status hash, the done hash); false (nothing written) when the key
-- holds another type of value: under a status key, the compact string record older versions
-- wrote (see qr_record_fields). Any other failure is raised.
local function qr_hash_hset(key, ...)
  local r = redis.pcall('HSET', key, ...)
  if type(r) == 'table' and r.err then
    if qr_error_code(r.err) == 'WRONGTYPE' then return false end
    error(r)
  end
  return true
end

-- HSET on a job's status record, unless the job has a compact success record (in the done
-- hash, or the string of older versions): that one is kept, nothing is written and false is
-- returned. Any other failure is raised.
local function qr_record_hset(key, ...)
  if qr_done_record(key) then return false end
  return qr_hash_hset(key, ...)
end

-- A compact success record spelled out in the fields a status hash would hold.
local function qr_compact_fields(rec)
  local finished, worker, attempt, task, enqueued, run, result = string.match(
    rec, '^1\t(%d+)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t(%d*)\t(.*)$')
  if not finished then return {} end
  local out = {'state', 'succeeded', 'task', task, 'attempt', attempt, 'enqueued_ms', enqueued,
    'started_ms', string.format('%.0f', tonumber(finished) - (tonumber(run) or 0)),
    'finished_ms', finished, 'worker', worker}
  if result ~= '' then
    out[#out + 1] = 'result'
    out[#out + 1] = result
  end
  return out
end

-- A job's status record as HGETALL would return it (field, value, ...). A hash is returned as
-- it is; the compact record of a job that succeeded at its first try (in the done hash, or a
-- string under the status key where older versions wrote it) is spelled out.
local function qr_record_fields(key)
  local rec = redis.pcall('HGETALL', key)
  if not rec.err then
    if #rec > 0 then return rec end
    local compact = qr_done_record(key)
    return compact and qr_compact_fields(compact) or rec
  end
  if qr_error_code(rec.err) ~= 'WRONGTYPE' then error(rec) end
  return qr_compact_fields(redis.call('GET', key))
end
