--[[
  Admit jobs to a rate-limit bucket: run each now, or give it its place in the bucket's line.

  A job that finds no token is charged anyway: the windows' credit goes below zero and the job's
  turn is when the bucket will have earned it (qrunner/tokenbucket.py, schedule(); change both
  together). The next job to ask is scheduled after it, so each waiting job is deferred once, to
  its real turn, instead of asking again at every refill. A turn further away than the caller
  can wait in place is recorded under the job's id; when the job comes back it finds its turn
  and runs without being charged again. Turns are stored less the line's shift, so a throttle
  can push the whole line back by changing one number (throttle_bucket.lua).

  A recorded turn that has come due but whose job has not come back yet (its workers are busy,
  or it waits behind other entries of its stream) is a token set aside for that job. The bucket
  holds at most its capacity, set-aside tokens included: the windows' credit refills only up to
  capacity less those tokens, and when more turns than the capacity are due and unclaimed the
  later ones lapse (their jobs join the line again when they come back). So jobs that come back
  late run at once, but never more at once than the bucket's burst: the limit holds for the
  runs, not only for the turns.

  Several jobs of the same cost can be admitted in one call; they are judged one after the
  other, in the order given, exactly as separate calls at the same moment would judge them.

  Jobs of a gated queue (reserve = 0) were read against an allowance (bucket_allowance.lua),
  which set them aside in the reads key until admitted. Admitted now (charged, or refused), they
  leave it: counted in the windows' credit from here on, they must not also be counted as set
  aside, or each allowance would come out short by the jobs admitted since the key was made,
  and two workers reading in turns within settle_ms keep the key alive and the bucket at half
  its rate.

  Input:
    KEYS[1..n]   window hashes, as in take_tokens.lua (credit may be negative here)
    KEYS[n+1]    block key, qr:rl:{bucket}:block
    KEYS[n+2]    turns: sorted set, member (job id, or "~<seq>") -> turn ms less the shift
    KEYS[n+3]    line: hash, shift = ms the line was pushed back, seq = last anonymous member
    KEYS[n+4]    reads: jobs of a gated queue allowed to a reader and not yet admitted

    ARGV[1]      cost of each job, in tokens (integer >= 1)
    ARGV[2]      now, ms since epoch; empty string -> Redis TIME (G7, one clock)
    ARGV[3]      reserve: 1 = record a turn further away than the job's hold_ms; 0 = refuse
                 such a job and charge nothing (it waits outside the line)
    ARGV[4]      max_wait_ms: the longest wait returned for a recorded turn (0 = none); the job
                 then asks again and finds its turn still ahead
    ARGV[5]      stale_ms: recorded turns overdue by more than this are forgotten
    ARGV[6]      m, the number of jobs
    ARGV[7..6+2m]  per job: its id ("" = anonymous: when it comes back it claims the earliest
                 recorded turn that is due), and hold_ms (a turn at most this far ahead is the
                 caller's to wait for in place: charged, not recorded)
    ARGV[7+2m..] for window i = 0..n-1: tokens, period_ms, capacity (as take_tokens.lua)

  Output: {code_1, wait_1, ..., code_m, wait_m, waiting, next_ms, now}, per job:
    code 1  run now: granted, tokens taken now
    code 2  run now: the job's recorded turn (anonymous: the earliest recorded turn) is due
    code 3  wait wait_ms in place, then run: the turn is within hold_ms (nothing recorded)
    code 4  defer wait_ms: the job's turn is recorded (just now, or earlier and still ahead)
    code 5  defer wait_ms: refused with reserve = 0, nothing charged or recorded
  then, for the bucket after the call (both -1 when no job had code 2, 4 or 5, which are the
  only ones that look at or change the recorded turns):
    waiting  turns recorded (jobs deferred to their turn)
    next_ms  ms until the earliest recorded turn (0 if due), or -1 when none is recorded
  and now, the time the call was judged at (ms since epoch): a job with code 1 or 2 was given its
  token then, one with code 3 at now + wait_ms.

  Errors:
    QRBADARGS            KEYS/ARGV counts disagree, or a number is missing or out of range
    QRCOSTOVERCAPACITY   cost above a window's capacity; it could never be granted
]]

local nwin = #KEYS - 4
local njobs = tonumber(ARGV[6])
if nwin < 1 or njobs == nil or njobs < 1 or #ARGV ~= 6 + 2 * njobs + 3 * nwin then
  return redis.error_reply("QRBADARGS want n window keys + 4 and 6 + 2m + 3n args, got " ..
    #KEYS .. " keys and " .. #ARGV .. " args")
end

local block_key, turns_key, line_key = KEYS[nwin + 1], KEYS[nwin + 2], KEYS[nwin + 3]
local reads_key = KEYS[nwin + 4]
local cost = qr_int(ARGV[1], 1, "cost")
-- The Redis clock unless the caller gave a time (tests do).
local now = ARGV[2] == "" and qr_now("") or qr_int(ARGV[2], 0, "now_ms")
local reserve = ARGV[3] == "1"
local max_wait = qr_int(ARGV[4], 0, "max_wait_ms")
local stale_ms = qr_int(ARGV[5], 0, "stale_ms")

local blocked_until = tonumber(redis.call("GET", block_key) or "")
if blocked_until ~= nil and blocked_until <= now then blocked_until = nil end

-- The shift is read only when a recorded turn is looked at: most calls never need it.
local shift = nil
local function line_shift()
  if shift == nil then shift = tonumber(redis.call("HGET", line_key, "shift") or "0") end
  return shift
end

-- Recorded turns that are due and unclaimed: tokens set aside, at most the bucket's capacity
-- (in jobs of this cost). Turns overdue by more than stale_ms belong to jobs that are not
-- coming back and are forgotten first.
local most_set_aside = nil
for i = 1, nwin do
  local capacity = tonumber(ARGV[6 + 2 * njobs + 3 * i])
  if capacity ~= nil then
    local jobs = math.floor(capacity / cost)
    if most_set_aside == nil or jobs < most_set_aside then most_set_aside = jobs end
  end
end
local set_aside = 0
if redis.call("EXISTS", turns_key) == 1 then
  local due = string.format("%d", now - line_shift())
  redis.call("ZREMRANGEBYSCORE", turns_key, "-inf",
    "(" .. string.format("%d", now - line_shift() - stale_ms))
  set_aside = redis.call("ZCOUNT", turns_key, "-inf", due)
  if most_set_aside ~= nil and set_aside > most_set_aside then
    -- A full bucket earns nothing more: the turns that came due after it filled have lapsed.
    redis.call("ZREMRANGEBYRANK", turns_key, most_set_aside, set_aside - 1)
    set_aside = most_set_aside
  end
end

-- The windows, refilled to now: read at the first job that joins the line, or at once when
-- tokens are set aside (their cap must be stored, or the credit would refill past it).
local windows = nil
local dirty = false
local function load_windows()
  windows = {}
  for i = 1, nwin do
    local base = 4 + 2 * njobs + 3 * i
    local tokens = qr_int(ARGV[base], 1, "tokens of window " .. i)
    local period = qr_int(ARGV[base + 1], 1, "period_ms of window " .. i)
    local capacity = qr_int(ARGV[base + 2], 1, "capacity of window " .. i)
    if cost > capacity then
      error({err = "QRCOSTOVERCAPACITY cost " .. cost .. " exceeds capacity " .. capacity ..
        " of window " .. KEYS[i] .. "; it could never be granted"})
    end
    local full = capacity * period
    local credit, ts = qr_window(KEYS[i], full, now, tokens)
    -- Tokens set aside for jobs whose turn is due count against the capacity: what the window
    -- would have earned past it is lost, as a full bucket loses it.
    if credit > full - set_aside * cost * period then
      credit = full - set_aside * cost * period
      dirty = true
    end
    windows[i] = {credit = credit, ts = ts, tokens = tokens, need = cost * period, full = full}
  end
end
if set_aside > 0 then load_windows() end

local out = {}
local looked_up = false
local last_turn = nil

for j = 1, njobs do
  local job_id = ARGV[5 + 2 * j]
  local hold_ms = qr_int(ARGV[6 + 2 * j], 0, "hold_ms")
  local code, wait = nil, 0

  -- A job coming back for its turn. One overdue by more than stale_ms is a newcomer again.
  if job_id ~= "" then
    local score = redis.call("ZSCORE", turns_key, job_id)
    if score then
      wait = tonumber(score) + line_shift() - now
      if wait < -stale_ms then
        redis.call("ZREM", turns_key, job_id)
      else
        if blocked_until ~= nil then wait = math.max(wait, blocked_until - now) end
        if wait <= 0 then
          redis.call("ZREM", turns_key, job_id)
          set_aside = math.max(0, set_aside - 1)
          code, wait, looked_up = 2, 0, true
        elseif wait <= hold_ms then
          redis.call("ZREM", turns_key, job_id)
          code = 3
        else
          if max_wait > 0 and wait > max_wait then wait = max_wait end
          code, looked_up = 4, true
        end
      end
    end
  elseif blocked_until == nil then
    local due = redis.call("ZRANGEBYSCORE", turns_key,
      string.format("%d", now - line_shift() - stale_ms), string.format("%d", now - line_shift()),
      "LIMIT", 0, 1)
    if #due > 0 then
      redis.call("ZREM", turns_key, due[1])
      set_aside = math.max(0, set_aside - 1)
      code, wait, looked_up = 2, 0, true
    end
  end

  -- A job joining the line: schedule() in qrunner/tokenbucket.py.
  if code == nil then
    if windows == nil then load_windows() end
    local turn = now
    for i = 1, nwin do
      local w = windows[i]
      local start = math.max(now, w.ts)
      if w.credit < w.need then
        turn = math.max(turn, start + qr_ceil_div(w.need - w.credit, w.tokens))
      else
        turn = math.max(turn, start)
      end
    end
    if blocked_until ~= nil then turn = math.max(turn, blocked_until) end
    wait = turn - now
    if wait > hold_ms and not reserve then
      code, looked_up = 5, true
    else
      for i = 1, nwin do windows[i].credit = windows[i].credit - windows[i].need end
      dirty = true
      if wait == 0 then
        code = 1
      elseif wait <= hold_ms then
        code = 3
      else
        local member = job_id
        if member == "" then member = "~" .. redis.call("HINCRBY", line_key, "seq", 1) end
        redis.call("ZADD", turns_key, string.format("%d", turn - line_shift()), member)
        last_turn = turn
        if max_wait > 0 and wait > max_wait then wait = max_wait end
        code, looked_up = 4, true
      end
    end
  end
  out[#out + 1] = code
  out[#out + 1] = wait
end

-- A gated queue's jobs leave the reader's allowance (never below zero: a reclaimed job was
-- read outside any allowance). SET with KEEPTTL, not DECRBY: the same effect with the commands
-- the worker's ACL user already has (docs/redis-acl.md).
if not reserve then
  local allowed = tonumber(redis.call("GET", reads_key) or "")
  if allowed ~= nil then
    if allowed > njobs then
      redis.call("SET", reads_key, string.format("%d", allowed - njobs), "KEEPTTL")
    else
      redis.call("DEL", reads_key)
    end
  end
end

if dirty then
  for i = 1, nwin do
    local w = windows[i]
    redis.call("HSET", KEYS[i], "credit", string.format("%d", w.credit),
      "ts", string.format("%d", w.ts))
    -- Until full again (idle_ttl_ms), counted from the stored time when that lies ahead.
    redis.call("PEXPIRE", KEYS[i],
      math.max(0, w.ts - now) + qr_ceil_div(w.full - w.credit, w.tokens) + 1)
  end
end
if last_turn ~= nil then
  -- The turns and the shift they are measured against live and die together; a new turn is
  -- always the line's last.
  local ttl = last_turn - now + stale_ms + 1
  redis.call("PEXPIRE", turns_key, ttl)
  if line_shift() ~= 0 or redis.call("HEXISTS", line_key, "seq") == 1 then
    redis.call("PEXPIRE", line_key, ttl)
  end
end

if looked_up then
  local waiting = redis.call("ZCARD", turns_key)
  local next_ms = -1
  if waiting > 0 then
    local first = redis.call("ZRANGE", turns_key, 0, 0, "WITHSCORES")
    next_ms = math.max(0, tonumber(first[2]) + line_shift() - now)
  end
  out[#out + 1] = waiting
  out[#out + 1] = next_ms
else
  out[#out + 1] = -1
  out[#out + 1] = -1
end
out[#out + 1] = now
return out
