--[[
  Admit one job to a rate-limit bucket: run it now, or give it its place in the bucket's line.

  A job that finds no token is charged anyway: the windows' credit goes below zero and the job's
  turn is when the bucket will have earned it (qrunner/tokenbucket.py, schedule(); change both
  together). The next job to ask is scheduled after it, so each waiting job is deferred once, to
  its real turn, instead of asking again at every refill. A turn further away than the caller
  can wait in place is recorded under the job's id; when the job comes back it finds its turn
  and runs without being charged again. Turns are stored less the line's shift, so a throttle
  can push the whole line back by changing one number (throttle_bucket.lua).

  Input:
    KEYS[1..n]   window hashes, as in take_tokens.lua (credit may be negative here)
    KEYS[n+1]    block key, qr:rl:{bucket}:block
    KEYS[n+2]    turns: sorted set, member (job id, or "~<seq>") -> turn ms less the shift
    KEYS[n+3]    line: hash, shift = ms the line was pushed back, seq = last anonymous member

    ARGV[1]      cost, in tokens (integer >= 1)
    ARGV[2]      now, ms since epoch; empty string -> Redis TIME (G7, one clock)
    ARGV[3]      job id; "" = anonymous: a returning job claims the earliest turn that is due
    ARGV[4]      hold_ms: a turn at most this far ahead is the caller's to wait for in place; it
                 is charged but not recorded
    ARGV[5]      reserve: 1 = record a turn further away than hold_ms; 0 = refuse such a job
                 and charge nothing (it waits outside the line)
    ARGV[6]      max_wait_ms: the longest wait returned for a recorded turn (0 = none); the job
                 then asks again and finds its turn still ahead
    ARGV[7]      stale_ms: recorded turns overdue by more than this are forgotten
    ARGV[8+3i..] for window i = 0..n-1: tokens, period_ms, capacity (as take_tokens.lua)

  Output: {code, wait_ms, waiting, next_ms}
    code 1  run now: granted, tokens taken now
    code 2  run now: the job's recorded turn (anonymous: the earliest recorded turn) is due
    code 3  wait wait_ms in place, then run: the turn is within hold_ms (nothing recorded)
    code 4  defer wait_ms: the job's turn is recorded (just now, or earlier and still ahead)
    code 5  defer wait_ms: refused with reserve = 0, nothing charged or recorded
    waiting  turns recorded for the bucket after this call (jobs deferred to their turn);
             -1 (not looked up) for codes 1 and 3, which leave the recorded turns as they were
    next_ms  ms until the earliest recorded turn (0 if due); -1 when none, or not looked up

  Errors:
    QRBADARGS            KEYS/ARGV counts disagree, or a number is missing or out of range
    QRCOSTOVERCAPACITY   cost above a window's capacity; it could never be granted
]]

local nwin = #KEYS - 3
if nwin < 1 or #ARGV ~= 7 + 3 * nwin then
  return redis.error_reply("QRBADARGS want n window keys + 3 and 7 + 3n args, got " ..
    #KEYS .. " keys and " .. #ARGV .. " args")
end

local function int_at_least(value, low, what)
  local n = tonumber(value)
  if n == nil or n < low or n ~= math.floor(n) then
    error({err = "QRBADARGS " .. what .. " must be an integer >= " .. low .. ", got '" ..
      tostring(value) .. "'"})
  end
  return n
end

local function ceil_div(a, b)
  -- Exact ceiling of a / b for integers below 2^53: the double quotient can be off by one.
  local q = math.floor(a / b)
  while q * b < a do q = q + 1 end
  while (q - 1) * b >= a do q = q - 1 end
  return q
end

local block_key, turns_key, line_key = KEYS[nwin + 1], KEYS[nwin + 2], KEYS[nwin + 3]
local cost = int_at_least(ARGV[1], 1, "cost")
local now
if ARGV[2] == "" then
  local t = redis.call("TIME")
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
else
  now = int_at_least(ARGV[2], 0, "now_ms")
end
local job_id = ARGV[3]
local hold_ms = int_at_least(ARGV[4], 0, "hold_ms")
local reserve = ARGV[5] == "1"
local max_wait = int_at_least(ARGV[6], 0, "max_wait_ms")
local stale_ms = int_at_least(ARGV[7], 0, "stale_ms")

local blocked_until = tonumber(redis.call("GET", block_key) or "")
if blocked_until ~= nil and blocked_until <= now then blocked_until = nil end

-- The shift is read only when a recorded turn is looked at: most calls never need it.
local shift = nil
local function line_shift()
  if shift == nil then shift = tonumber(redis.call("HGET", line_key, "shift") or "0") end
  return shift
end

local function reply(code, wait)
  local waiting = redis.call("ZCARD", turns_key)
  local next_ms = -1
  if waiting > 0 then
    local first = redis.call("ZRANGE", turns_key, 0, 0, "WITHSCORES")
    next_ms = math.max(0, tonumber(first[2]) + line_shift() - now)
  end
  return {code, wait, waiting, next_ms}
end

local function keep_line(turn)
  -- The turns and the shift they are measured against live and die together.
  local ttl = turn - now + stale_ms + 1
  for _, key in ipairs({turns_key, line_key}) do
    if redis.call("PTTL", key) < ttl then redis.call("PEXPIRE", key, ttl) end
  end
end

-- A job coming back for its turn. One overdue by more than stale_ms is a newcomer again.
if job_id ~= "" then
  local score = redis.call("ZSCORE", turns_key, job_id)
  if score then
    local wait = tonumber(score) + line_shift() - now
    if wait < -stale_ms then
      redis.call("ZREM", turns_key, job_id)
    else
      if blocked_until ~= nil then wait = math.max(wait, blocked_until - now) end
      if wait <= 0 then
        redis.call("ZREM", turns_key, job_id)
        return reply(2, 0)
      end
      if wait <= hold_ms then
        redis.call("ZREM", turns_key, job_id)
        return {3, wait, -1, -1}
      end
      if max_wait > 0 and wait > max_wait then wait = max_wait end
      return reply(4, wait)
    end
  end
elseif blocked_until == nil then
  local due = redis.call("ZRANGEBYSCORE", turns_key,
    string.format("%d", now - line_shift() - stale_ms), string.format("%d", now - line_shift()),
    "LIMIT", 0, 1)
  if #due > 0 then
    redis.call("ZREM", turns_key, due[1])
    return reply(2, 0)
  end
end

-- A job joining the line: schedule() in qrunner/tokenbucket.py.
local turn = now
local after = {}
for i = 1, nwin do
  local base = 5 + 3 * i
  local tokens = int_at_least(ARGV[base], 1, "tokens of window " .. i)
  local period = int_at_least(ARGV[base + 1], 1, "period_ms of window " .. i)
  local capacity = int_at_least(ARGV[base + 2], 1, "capacity of window " .. i)
  if cost > capacity then
    return redis.error_reply("QRCOSTOVERCAPACITY cost " .. cost .. " exceeds capacity " ..
      capacity .. " of window " .. KEYS[i] .. "; it could never be granted")
  end
  local full = capacity * period
  local state = redis.call("HMGET", KEYS[i], "credit", "ts")
  local credit, ts
  if state[1] == false or state[2] == false then
    credit, ts = full, now
  else
    credit, ts = tonumber(state[1]), tonumber(state[2])
    if now <= ts then
      credit = math.min(credit, full)
    else
      credit = math.min(full, credit + (now - ts) * tokens)
      ts = now
    end
  end
  local need = cost * period
  local start = math.max(now, ts)
  if credit < need then
    turn = math.max(turn, start + ceil_div(need - credit, tokens))
  else
    turn = math.max(turn, start)
  end
  after[i] = {credit - need, ts, tokens, full}
end
if blocked_until ~= nil then turn = math.max(turn, blocked_until) end

local wait = turn - now
if wait > hold_ms and not reserve then
  return reply(5, wait)
end
for i = 1, nwin do
  local credit, ts, tokens, full = after[i][1], after[i][2], after[i][3], after[i][4]
  redis.call("HSET", KEYS[i], "credit", string.format("%d", credit), "ts", string.format("%d", ts))
  -- Until full again (idle_ttl_ms), counted from the stored time when that lies ahead.
  redis.call("PEXPIRE", KEYS[i], math.max(0, ts - now) + ceil_div(full - credit, tokens) + 1)
end
if wait == 0 then
  return {1, 0, -1, -1}
end
if wait <= hold_ms then
  return {3, wait, -1, -1}
end
local member = job_id
if member == "" then
  member = "~" .. redis.call("HINCRBY", line_key, "seq", 1)
end
-- Turns overdue by more than stale_ms belong to jobs that are not coming back.
redis.call("ZREMRANGEBYSCORE", turns_key, "-inf",
  "(" .. string.format("%d", now - line_shift() - stale_ms))
redis.call("ZADD", turns_key, string.format("%d", turn - line_shift()), member)
keep_line(turn)
if max_wait > 0 and wait > max_wait then wait = max_wait end
return reply(4, wait)
