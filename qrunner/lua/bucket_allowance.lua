--[[
  How many one-token jobs a bucket can take within a horizon, and when the first can run.
  Workers ask it before reading a queue whose every job needs this bucket, so they fetch only
  work that can run soon and leave the rest in the stream.

  The count mirrors qrunner/tokenbucket.py allowance(); change both together. The bucket's
  windows are only read: the jobs read are charged when they are admitted (reserve_turn.lua).
  Until then, what one worker was allowed is set aside for settle_ms, so that workers asking at
  the same moment share the turns instead of each reading all of them. Only what the worker
  will read is set aside (at most `most`), and admission takes its jobs out again
  (reserve_turn.lua): set aside beyond that, turns would go unread until the key lapsed, which
  it never does while workers keep asking within settle_ms.

  Input:
    KEYS[1..n]   window hashes, as in take_tokens.lua
    KEYS[n+1]    block key, qr:rl:{bucket}:block
    KEYS[n+2]    reads key, qr:rl:{bucket}:reads: jobs allowed to a reader in the last settle_ms
    ARGV[1]      now, ms since epoch; empty string -> Redis TIME (G7, one clock)
    ARGV[2]      horizon, ms (integer >= 0)
    ARGV[3]      settle_ms: how long an allowance is set aside (0 = nothing set aside)
    ARGV[4]      most: the most jobs the caller will read (0 = no cap)
    ARGV[5]      lead_ms: while the first turn a reader could get is further away than this,
                 the count is 0 and nothing is set aside (0 = off): the line is long enough,
                 and what could be read now is a job or two at its far end, which is cheaper
                 read later in one batch
    ARGV[6+3i..] for window i = 0..n-1: tokens, period_ms, capacity

  Output: {count, first_ms, busy_ms}
    count      jobs this caller may read: those joining the line now, one after the other,
               whose turn is within the horizon, less what was set aside for other readers
    first_ms   ms from now until the first such job's turn (0 = at once)
    busy_ms    when count is 0 only because of other readers: ms until their share lapses

  Errors:
    QRBADARGS   KEYS/ARGV counts disagree, or a number is missing or out of range
]]

local nwin = #KEYS - 2
if nwin < 1 or #ARGV ~= 5 + 3 * nwin then
  return redis.error_reply("QRBADARGS want n window keys + 2 and 5 + 3n args, got " ..
    #KEYS .. " keys and " .. #ARGV .. " args")
end

-- The Redis clock unless the caller gave a time (tests do).
local now = ARGV[1] == "" and qr_now("") or qr_int(ARGV[1], 0, "now_ms")
local horizon_end = now + qr_int(ARGV[2], 0, "horizon_ms")
local settle_ms = qr_int(ARGV[3], 0, "settle_ms")
local most = qr_int(ARGV[4], 0, "most")
local lead_ms = qr_int(ARGV[5], 0, "lead_ms")

local first = now
local count = nil
for i = 1, nwin do
  local tokens = qr_int(ARGV[3 * i + 3], 1, "tokens of window " .. i)
  local period = qr_int(ARGV[3 * i + 4], 1, "period_ms of window " .. i)
  local capacity = qr_int(ARGV[3 * i + 5], 1, "capacity of window " .. i)
  local full = capacity * period
  local credit, ts = qr_window(KEYS[i], full, now, tokens)
  local start = math.max(now, ts)
  if credit < period then
    first = math.max(first, start + qr_ceil_div(period - credit, tokens))
  else
    first = math.max(first, start)
  end
  local served = 0
  if horizon_end >= start then
    served = math.max(0, qr_floor_div(credit + (horizon_end - start) * tokens, period))
  end
  if count == nil or served < count then count = served end
end

local blocked_until = tonumber(redis.call("GET", KEYS[nwin + 1]) or "")
if blocked_until ~= nil and blocked_until > now then
  first = math.max(first, blocked_until)
  if blocked_until > horizon_end then count = 0 end
end

if lead_ms > 0 and first - now > lead_ms then count = 0 end

local busy = 0
local reads_key = KEYS[nwin + 2]
local taken = 0
if settle_ms > 0 and count > 0 then
  taken = tonumber(redis.call("GET", reads_key) or "0")
  if taken >= count then
    busy = math.max(1, redis.call("PTTL", reads_key))
    count = 0
  else
    count = count - taken
  end
end
if most > 0 and count > most then count = most end
if settle_ms > 0 and count > 0 then
  redis.call("SET", reads_key, string.format("%d", taken + count), "PX", settle_ms)
end
return {count, first - now, busy}
