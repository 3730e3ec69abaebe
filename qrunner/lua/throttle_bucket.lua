--[[
  Block a rate-limit bucket until a time, for every worker (a provider answered 429).

  The block only ever moves later: two workers reporting different Retry-After values leave
  the longer one in force, and a short report never cuts short a longer block.

  Input:
    KEYS[1]   block key, qr:rl:{bucket}:block: string, "blocked until" in ms since epoch
    ARGV[1]   block for, ms from now (integer >= 0)
    ARGV[2]   now, ms since epoch; empty string -> Redis TIME (G7, one clock)

  Output:
    blocked-until time in ms since epoch now in force (the later of the old and the new)
    The key is PEXPIREd at that time, so a lifted block leaves nothing behind.

  Errors:
    QRBADARGS   a number is missing or negative
]]

local block_ms = tonumber(ARGV[1])
if block_ms == nil or block_ms < 0 then
  return redis.error_reply("QRBADARGS block ms must be a number >= 0, got '" ..
    tostring(ARGV[1]) .. "'")
end
block_ms = math.ceil(block_ms)

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
return untilms
