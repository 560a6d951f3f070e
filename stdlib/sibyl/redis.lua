-- sibyl.redis -- a Redis client on the event loop: hiredis async connections
-- driven by libevent (runtime/src/redis*.c, `sibyl.redis.core`). This layer
-- holds the policy: options and URLs, command sugar, pipelines, the
-- subscription iterator. See doc/redis.md.
--
--   local redis = require "sibyl.redis"
--   local r = assert(redis.connect{ host = "127.0.0.1", port = 6379, db = 0 })
--   r:set("k", "v")                       --> "OK"
--   local v, err = r:get("k")             --> "v"; nil (no err) when the key is missing
--   local res = r:pipeline(function(p) p:incr("n"); p:get("n") end)   --> { 1, "1" }
--   local sub = r:subscribe("news")
--   for msg in sub:messages() do print(msg.channel, msg.data) end
--
-- Errors (nil, err): kinds connect, timeout, auth, redis (err.code is the
-- first word of the server's message: "WRONGTYPE", "ERR", ...), closed.
-- A nil reply is a single nil; tell it from an error by the second value.

local core = require "sibyl.redis.core"

local type, pairs, select, tostring, tonumber, error, setmetatable =
    type, pairs, select, tostring, tonumber, error, setmetatable
local upper, find, match, gsub, format, char, floor =
    string.upper, string.find, string.match, string.gsub, string.format, string.char, math.floor

local _M = { _VERSION = "0.1.0" }

--- The placeholder for nil elements inside array replies (the same value as
-- sibyl.json.null and cjson.null), so arrays keep their length.
_M.null = core.null

--- The hiredis version this runtime was built with.
_M.hiredis_version = core.hiredis_version

--- Defaults for redis.connect; change them here or per call.
_M.defaults = {
    host = "127.0.0.1",
    port = 6379,
    db = 0,
    timeout = 5,             -- seconds: connect, and each command (0 = none)
    pool = 1,                -- connections; commands spread over them
    max_pending = 100000,    -- commands waiting for replies, over the pool
    reconnect = true,        -- reconnect on the next command after a drop
    reconnect_max = 5,       -- seconds: cap of the exponential backoff
    protocol = 2,            -- 3 sends HELLO 3 (RESP3; needs hiredis >= 1.0)
    max_queue = 10000,       -- subscriptions: messages waiting for sub:next()
}

local known = {
    host = "string", port = "number", password = "string", username = "string",
    db = "number", timeout = "number", pool = "number", max_pending = "number",
    reconnect = "boolean", reconnect_max = "number", protocol = "number",
    max_queue = "number",
}


local unescape = require("sibyl.http").unescape


--- redis.parse_url("redis://[[user]:password@]host[:port][/db]") -> opts
-- Raises on a malformed URL (a programmer mistake, like a bad option).
function _M.parse_url(url)
    if type(url) ~= "string" then
        error("redis.parse_url: url must be a string, got " .. type(url), 2)
    end
    local scheme, rest = match(url, "^(%a[%w+.-]*)://(.*)$")
    if scheme == "rediss" then
        error("redis: TLS (rediss://) is not supported; use redis:// through a TLS tunnel "
              .. "(stunnel, spiped) or a private network", 2)
    end
    if scheme ~= "redis" then
        error("redis: URL must look like redis://[:password@]host[:port][/db], got " .. url, 2)
    end
    local o = {}
    local userinfo, hostpart = match(rest, "^(.*)@([^@]*)$")
    if userinfo then
        local user, pass = match(userinfo, "^([^:]*):(.*)$")
        if user then
            if user ~= "" then o.username = unescape(user) end
            if pass ~= "" then o.password = unescape(pass) end
        elseif userinfo ~= "" then
            o.username = unescape(userinfo)
        end
    else
        hostpart = rest
    end
    local hostport, path = match(hostpart, "^([^/?]*)(.*)$")
    local host, port = match(hostport, "^%[([^%]]+)%]:?(%d*)$")       -- [::1]:6379
    if not host then
        host, port = match(hostport, "^([^:]*):?(%d*)$")
    end
    if not host then
        error("redis: cannot read host and port from " .. url, 2)
    end
    if host ~= "" then o.host = host end
    if port ~= "" then o.port = tonumber(port) end
    local db = match(path, "^/(%d+)")
    if db then
        o.db = tonumber(db)
    elseif path ~= "" and path ~= "/" and not find(path, "^%?") then
        error("redis: the URL path must be a database number (redis://host:port/3), got "
              .. path, 2)
    end
    return o
end


local function check_int(o, k, lo, hi)
    local v = o[k]
    if v ~= floor(v) or v < lo or (hi and v > hi) then
        error(format("redis.connect: opts.%s must be an integer %s, got %s", k,
              hi and format("from %d to %d", lo, hi) or format(">= %d", lo), tostring(v)), 3)
    end
end


-- Merge defaults, URL and options; raise on unknown or mistyped options.
local function normalize(opts, extra)
    if type(opts) == "string" then
        local from_url = _M.parse_url(opts)
        if extra ~= nil then
            if type(extra) ~= "table" then
                error("redis.connect(url, opts): opts must be a table", 3)
            end
            for k, v in pairs(extra) do from_url[k] = v end
        end
        opts = from_url
    elseif opts == nil then
        opts = {}
    elseif type(opts) ~= "table" then
        error("redis.connect: pass an options table or a redis:// URL, got " .. type(opts), 3)
    end
    local o = {}
    for k, v in pairs(opts) do
        local want = known[k]
        if not want then
            error("redis.connect: unknown option '" .. tostring(k) .. "'", 3)
        end
        if type(v) ~= want then
            error(format("redis.connect: opts.%s must be a %s, got %s", k, want, type(v)), 3)
        end
        o[k] = v
    end
    for k, v in pairs(_M.defaults) do
        if o[k] == nil then o[k] = v end
    end
    check_int(o, "port", 1, 65535)
    check_int(o, "db", 0)
    check_int(o, "pool", 1, 1024)
    check_int(o, "max_pending", 1)
    check_int(o, "max_queue", 1)
    if o.protocol ~= 2 and o.protocol ~= 3 then
        error("redis.connect: opts.protocol must be 2 or 3, got " .. tostring(o.protocol), 3)
    end
    if o.protocol == 3 and tonumber(match(_M.hiredis_version, "^(%d+)")) < 1 then
        error("redis.connect: protocol = 3 (RESP3) needs hiredis >= 1.0, and this build has "
              .. "hiredis " .. _M.hiredis_version .. "; use protocol = 2", 3)
    end
    if o.timeout < 0 or o.timeout ~= o.timeout then
        error("redis.connect: opts.timeout must be >= 0 seconds (0 = none)", 3)
    end
    if not (o.reconnect_max > 0) then
        error("redis.connect: opts.reconnect_max must be > 0 seconds", 3)
    end
    if o.host == "" then
        error("redis.connect: opts.host must not be empty", 3)
    end
    return o
end


local client_mt = core.client_mt
local sub_mt = core.sub_mt
local call = client_mt.call
local c_pipeline = client_mt._pipeline
local open_sub = client_mt._open_sub
local ctl = sub_mt._ctl
local max_queue = setmetatable({}, { __mode = "k" })   -- client -> its max_queue


--- redis.connect(opts | url [, opts]) -> client | nil, err
-- Must run in a task. Kinds: connect, timeout, auth, redis.
function _M.connect(opts, extra)
    local o = normalize(opts, extra)
    local r, err = core.connect(o)
    if r then
        max_queue[r] = o.max_queue
    end
    return r, err
end


-- Client methods: the C ones, the Lua ones below, and any other name as a
-- Redis command (r:hset(...) == r:call("HSET", ...)).
local methods = {}
for k, v in pairs(client_mt) do
    if type(v) == "function" and not find(k, "^_") then
        methods[k] = v
    end
end


-- A pipeline collects commands; r:pipeline sends them in one write.
local pipe_methods = {}
local pipe_mt = {}


function pipe_methods.call(p, ...)
    local n = select("#", ...)
    if n == 0 then
        error("redis pipeline: call needs a command name", 2)
    end
    local cmds = p[1]
    cmds[#cmds + 1] = { n = n, ... }
    return #cmds
end


pipe_mt.__index = function(_, k)
    local m = pipe_methods[k]
    if m == nil and type(k) == "string" then
        local cmd = upper(k)
        m = function(p, ...) return pipe_methods.call(p, cmd, ...) end
        pipe_methods[k] = m
    end
    return m
end


--- r:pipeline(fn) -> { reply, ... } | nil, err
-- fn(p) queues commands (p:set(k, v), p:call("GET", k), ...); they leave in
-- one write on one connection and the replies come back as one list, in
-- order. Inside the list a nil reply is redis.null and a Redis error reply
-- is an error object (kind "redis"); check with sibyl.is_error(v).
-- MULTI ... EXEC inside one pipeline is a transaction.
function methods.pipeline(r, fn)
    if type(fn) ~= "function" then
        error("r:pipeline(fn): fn must be a function that queues commands on its argument", 2)
    end
    local cmds = {}
    fn(setmetatable({ cmds }, pipe_mt))
    return c_pipeline(r, cmds)
end


--- r:subscribe(channel, ...) -> sub | nil, err: a subscription on a
-- connection of its own (same address, credentials and options).
function methods.subscribe(r, ...)
    local sub, err = open_sub(r, max_queue[r])
    if not sub then
        return nil, err
    end
    if select("#", ...) > 0 then
        local ok
        ok, err = ctl(sub, "subscribe", ...)
        if not ok then
            sub:close()
            return nil, err
        end
    end
    return sub
end


--- r:psubscribe(pattern, ...) -> sub | nil, err
function methods.psubscribe(r, ...)
    local sub, err = open_sub(r, max_queue[r])
    if not sub then
        return nil, err
    end
    local ok
    ok, err = ctl(sub, "psubscribe", ...)
    if not ok then
        sub:close()
        return nil, err
    end
    return sub
end


-- A table __index: known methods (and commands used before) are one table
-- lookup away; a new name makes its command function once.
setmetatable(methods, { __index = function(t, k)
    if type(k) ~= "string" or find(k, "^_") then return nil end
    local cmd = upper(k)
    local m = function(r, ...) return call(r, cmd, ...) end
    rawset(t, k, m)
    return m
end })
client_mt.__index = methods


-- Subscriptions.

--- sub:subscribe(channel, ...), sub:psubscribe(pattern, ...) -> true | nil, err
-- Return once the server confirmed. sub:unsubscribe([channel, ...]) and
-- sub:punsubscribe([pattern, ...]) drop the given names, or all of them.
function sub_mt.subscribe(sub, ...) return ctl(sub, "subscribe", ...) end
function sub_mt.psubscribe(sub, ...) return ctl(sub, "psubscribe", ...) end
function sub_mt.unsubscribe(sub, ...) return ctl(sub, "unsubscribe", ...) end
function sub_mt.punsubscribe(sub, ...) return ctl(sub, "punsubscribe", ...) end


--- sub:channels() -> { channel, ... }, { pattern, ... }
sub_mt.channels = sub_mt._names


--- for msg in sub:messages([timeout]) do ... end
-- Yields message tables until the subscription is closed (or, with a
-- timeout, until no message came for that long). Connection losses and
-- overflow reports are skipped: sub:next() shows them.
function sub_mt.messages(sub, timeout)
    return function()
        while true do
            local msg, err = sub:next(timeout)
            if msg then
                return msg
            end
            local kind = err and err.kind
            if kind ~= "connect" and kind ~= "overflow" then
                return nil
            end
        end
    end
end


return _M
