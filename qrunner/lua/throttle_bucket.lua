--[[
  Block a rate-limit bucket until a time, for every worker (a provider answered 429).

  The block only ever moves later: two workers reporting different Retry-After values leave
  the longer one in force, and a short report never cuts short a longer block.

  Given the bucket's line and windows as well, the bucket is paused rather than only blocked:
  the windows earn nothing while it lasts and every turn already given out (reserve_turn.lua)
  moves back by as much, so the jobs waiting in line keep their order and their spacing and
  nobody's turn falls inside the block.

  Input:
    KEYS[1]      block key, qr:rl:{bucket}:block: string, "blocked until" in ms since epoch
    KEYS[2]      (optional) line hash, qr:rl:{bucket}:line (field shift)
    KEYS[3]      (optional) turns sorted set, qr:rl:{bucket}:turns
    KEYS[4..]    (optional) window hashes, as in take_tokens.lua
    ARGV[1]      block for, ms from now (integer >= 0)
    ARGV[2]      now, ms since epoch; empty string -> Redis TIME (G7, one clock)
    ARGV[3i..3i+2] for window i = 1..n (when given): tokens, period_ms, capacity

  Output:
    blocked-until time in ms since epoch now in force (the later of the old and the new)
    The block key is PEXPIREd at that time, so a lifted block leaves nothing behind.

  Errors:
    QRBADARGS   a number is missing or negative, or KEYS/ARGV counts disagree
]]

local block_ms = tonumber(ARGV[1])
if block_ms == nil or block_ms < 0 then
  return redis.error_reply("QRBADARGS block ms must be a number >= 0, got '" ..
    tostring(ARGV[1]) .. "'")
end
block_ms = math.ceil(block_ms)

local nwin = 0
if #KEYS > 1 then
  nwin = #KEYS - 3
  if nwin < 1 or #ARGV ~= 2 + 3 * nwin then
    return redis.error_reply("QRBADARGS want block, line, turns + n window keys and 2 + 3n " ..
      "args, got " .. #KEYS .. " keys and " .. #ARGV .. " args")
  end
end

local now
if ARGV[2] == nil or ARGV[2] == "" then
  local t = redis.call("TIME")
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
else
  now = tonumber(ARGV[2])
  if now == nil then
    return redis.error_reply("QRBADARGS now_ms must be a number or empty, got '" .. ARGV[2] .. "'")
  end
end

local existing = tonumber(redis.call("GET", KEYS[1]) or "")
local untilms = now + block_ms
if existing ~= nil and existing >= untilms then
  return existing
end
if block_ms > 0 then
  redis.call("SET", KEYS[1], string.format("%d", untilms), "PX", block_ms)
end
if nwin == 0 or block_ms == 0 then
  return untilms
end

-- The pause runs from the end of any block already in force (or now) to the new end.
local start = now
if existing ~= nil and existing > now then start = existing end
local delta = untilms - start

for i = 1, nwin do
  local key = KEYS[3 + i]
  local tokens, period, capacity = tonumber(ARGV[3 * i]), tonumber(ARGV[3 * i + 1]),
    tonumber(ARGV[3 * i + 2])
  if tokens == nil or period == nil or capacity == nil then
    return redis.error_reply("QRBADARGS window " .. i .. " needs tokens, period_ms, capacity")
  end
  local full = capacity * period
  local credit, ts = qr_window(key, full, now, tokens)
  ts = math.max(ts, start) + delta
  redis.call("HSET", key, "credit", string.format("%d", credit), "ts", string.format("%d", ts))
  redis.call("PEXPIRE", key, ts - now + qr_ceil_div(full - credit, tokens) + 1)
end

-- Every recorded turn moves back by the pause; the keys live as much longer.
local line_key, turns_key = KEYS[2], KEYS[3]
local turns_ttl = redis.call("PTTL", turns_key)
if turns_ttl > 0 then
  redis.call("HINCRBY", line_key, "shift", delta)
  for _, key in ipairs({turns_key, line_key}) do
    redis.call("PEXPIRE", key, math.max(redis.call("PTTL", key), turns_ttl) + delta)
  end
end
return untilms
