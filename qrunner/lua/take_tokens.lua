--[[
  Take tokens from every window of one rate-limit bucket, all or nothing.

  Mirrors qrunner/tokenbucket.py (take_all) line for line; change both together. Levels are
  integer "credit" in units of 1/period_ms of a token, so each millisecond adds exactly
  `tokens` credit and the arithmetic stays exact in Lua's doubles (values below 2^53).

  Input:
    KEYS[1..n]   one hash per window, qr:rl:{bucket}:<tokens>per<period_ms>ms, fields:
                   credit  level, in 1/period_ms of a token (one token = period_ms credit)
                   ts      ms since epoch (Redis clock) of the last refill
                 A missing hash is a full window: keys expire only once full again.
    KEYS[n+1]    block key, qr:rl:{bucket}:block: string, "blocked until" in ms since epoch

    ARGV[1]      cost, in tokens (integer >= 1)
    ARGV[2]      now, ms since epoch; empty string -> Redis TIME (G7, one clock)
    ARGV[3i..3i+2] for window i = 1..n:
                   tokens     tokens refilled per period (integer >= 1)
                   period_ms  period, ms (integer >= 1)
                   capacity   most tokens held, i.e. the burst (integer >= 1)

  Output:
    {1, 0}         granted: cost taken from every window, each PEXPIREd until full again
    {0, wait_ms}   denied, nothing written: wait_ms (> 0) is the longest of the windows' waits
                   and of the block's remaining time

  Errors:
    QRBADARGS            KEYS/ARGV counts disagree, or a number is missing or below 1
    QRCOSTOVERCAPACITY   cost above a window's capacity; it could never be granted
]]

local nwin = #KEYS - 1
if nwin < 1 or #ARGV ~= 2 + 3 * nwin then
  return redis.error_reply("QRBADARGS want n window keys + 1 block key and 2 + 3n args, got " ..
    #KEYS .. " keys and " .. #ARGV .. " args")
end

local cost = qr_int(ARGV[1], 1, "cost")
local now
if ARGV[2] == "" then
  local t = redis.call("TIME")
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
else
  now = tonumber(ARGV[2])
  if now == nil then
    return redis.error_reply("QRBADARGS now_ms must be a number or empty, got '" .. ARGV[2] .. "'")
  end
end

local longest = 0
local after_credit = {}
local after_ts = {}
local limits = {}
for i = 1, nwin do
  local base = 3 * i
  local tokens = qr_int(ARGV[base], 1, "tokens of window " .. i)
  local period = qr_int(ARGV[base + 1], 1, "period_ms of window " .. i)
  local capacity = qr_int(ARGV[base + 2], 1, "capacity of window " .. i)
  if cost > capacity then
    return redis.error_reply("QRCOSTOVERCAPACITY cost " .. cost .. " exceeds capacity " ..
      capacity .. " of window " .. KEYS[i] .. "; it could never be granted")
  end
  local full = capacity * period
  limits[i] = {tokens, full}

  -- refill(): a missing window is full; a clock going backwards earns nothing.
  local credit, ts = qr_window(KEYS[i], full, now, tokens)

  -- take(): deduct when enough, else wait until enough.
  local need = cost * period
  if credit >= need then
    after_credit[i] = credit - need
  else
    local wait = qr_ceil_div(need - credit, tokens)
    if wait > longest then longest = wait end
    after_credit[i] = credit
  end
  after_ts[i] = ts
end

local blocked_until = tonumber(redis.call("GET", KEYS[nwin + 1]) or "")
if blocked_until ~= nil and blocked_until > now then
  longest = math.max(longest, blocked_until - now)
end

if longest > 0 then
  return {0, longest}
end

for i = 1, nwin do
  local tokens, full = limits[i][1], limits[i][2]
  redis.call("HSET", KEYS[i], "credit", string.format("%d", after_credit[i]),
    "ts", string.format("%d", after_ts[i]))
  -- idle_ttl_ms(): once full again the key carries no information, so let it vanish.
  redis.call("PEXPIRE", KEYS[i], qr_ceil_div(full - after_credit[i], tokens) + 1)
end
return {1, 0}
