-- sibyl.keys -- API key rotation and client-side pacing. The work is done in
-- C (runtime/src/keys.c and bucket.c, `sibyl.keys.core`); this layer re-exports it and
-- adds bucket:wait(), which sleeps on the event loop.
--
--   local keys = require "sibyl.keys"
--   local ring = keys.ring{ keys = keys.parse(os.getenv("OPENAI_API_KEYS") or ""),
--                           name = "openai" }
--   local key, id = ring:acquire()                  -- nil, err (rate_limited / auth) when none
--   ... send with key ...
--   ring:report(id, "rate_limited", retry_after)    -- or "ok", "quota", "auth"
--
--   local b = keys.bucket{ rpm = 600, tpm = 100000 }
--   local ok, err = b:wait(estimated_tokens)        -- sleeps until the budget allows
--   b:refund(estimated_tokens - used_tokens)
--
-- Caveats:
--  * State is per process. Instances that share keys each pace themselves.
--  * b:wait() reserves before it sleeps. When its task is cancelled during
--    the sleep the reservation is not given back (the task never resumes);
--    when a deadline stops it, it is.

local core = require "sibyl.keys.core"
local sibyl = require "sibyl"

local type, tostring, format, error, huge = type, tostring, string.format, error, math.huge
local sleep, time_left, new_error = sibyl.sleep, sibyl.time_left, sibyl.error

local _M = { _VERSION = "0.1.0" }

--- keys.parse(text) -> { key, ... }: split on commas and whitespace, drop empties.
_M.parse = core.parse

--- keys.redact(key) -> "sk-…3456": a short prefix and the last 4 characters.
_M.redact = core.redact

--- keys.ring(opts) -> ring (see doc/keys.md).
_M.ring = core.ring

--- keys.bucket(opts) -> bucket (see doc/keys.md).
_M.bucket = core.bucket

_M.DEFAULT_COOLDOWN = core.DEFAULT_COOLDOWN
_M.DEFAULT_AUTH_COOLDOWN = core.DEFAULT_AUTH_COOLDOWN
_M.DEFAULT_BURST_SECONDS = core.DEFAULT_BURST_SECONDS

local bucket_mt = core._bucket_mt
local take, refund = bucket_mt.take, bucket_mt.refund


--- b:wait([tokens]) -> true, waited | nil, err
-- Reserve one request and `tokens` tokens, then sleep until the budget
-- allows sending. Fails with kind "timeout" (nothing reserved) when the wait
-- would pass the task's deadline, and passes on sleep's timeout/cancel.
function bucket_mt.wait(b, tokens)
    if tokens ~= nil and (type(tokens) ~= "number" or tokens < 0 or tokens ~= tokens
                          or tokens == huge) then
        error("bucket:wait: tokens must be a finite number >= 0 or nil, got "
              .. (type(tokens) == "number" and tostring(tokens) or type(tokens)), 2)
    end
    local wait, limit = take(b, tokens)
    if not wait then
        return nil, limit                   -- closed
    end
    if wait <= 0 then
        return true, 0
    end
    local left = time_left()
    if left and wait > left then
        refund(b, tokens, 1)
        return nil, new_error("timeout",
            format("keys.bucket: the %s limit needs a %.2f s wait before this request, but the "
                   .. "task's deadline is %.2f s away; nothing was reserved. Give the task a "
                   .. "longer deadline, send fewer tokens or raise %s", limit, wait, left, limit),
            { retry_after = wait, limit = limit })
    end
    local ok, err = sleep(wait)
    if not ok then
        refund(b, tokens, 1)
        return nil, err
    end
    return true, wait
end


return _M
