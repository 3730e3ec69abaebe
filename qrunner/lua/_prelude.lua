-- Shared by every script: qrunner/scripts.py puts it in front of each one.

-- The Redis clock in ms, or `given` when the caller passed a time ("" = read TIME).
local function qr_now(given)
  if given ~= nil and given ~= '' then return tonumber(given) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The error reply for a failed redis.pcall, with the server's error code (OOM, NOGROUP, ...)
-- in front where clients read it: Redis 6.2 puts the script location first
-- ("@user_script: 3: -OOM ..."), Redis 7 and Valkey do not.
local function qr_error(err)
  if string.match(err, '^%u+ ') then return redis.error_reply(err) end
  local code = string.match(err, ': %-(%u+) ') or 'ERR'
  return redis.error_reply(code .. ' ' .. err)
end
