-- sibyl.llm.mock -- a MOCK provider with scripted replies, for testing your
-- own agents without a model or a network. It goes through the same
-- pipeline as real providers (retries, structured-output repair, usage
-- accounting, fallback), so error replies exercise your error handling.
--
--   local llm = require "sibyl.llm"
--   local m = llm.mock{ replies = { "Paris.", { tool_calls = { { name = "get_weather", arguments = { city = "Paris" } } } } } }
--   local r = llm.chat{ provider = m, messages = { { role = "user", content = "Capital of France?" } } }
--   assert(r.content == "Paris.") ; assert(#m.requests == 1)
--
-- A reply is a string (the content) or a table: { content=, tool_calls=,
-- finish_reason=, usage=, model=, delay= (seconds), error = { kind=,
-- message=, retry_after=, status= } }, or a function(req) returning one.
-- When the script runs out, the reply is "mock reply to: <last user text>"
-- (or opts.default, a reply or a function). Tokens are words.

local sibyl = require "sibyl"
local ffi = require "ffi"
local bit = require "bit"

local type, ipairs, pairs, tostring, setmetatable, error = type, ipairs, pairs, tostring, setmetatable, error
local gmatch, format, byte = string.gmatch, string.format, string.byte
local sqrt, floor = math.sqrt, math.floor
local remove, concat = table.remove, table.concat

local _M = {}


local function words(s)
    local n = 0
    for _ in gmatch(s or "", "%S+") do n = n + 1 end
    return n
end


local function last_user_text(req)
    for i = #req.messages, 1, -1 do
        local m = req.messages[i]
        if m.role == "user" then
            return type(m.content) == "string" and m.content or "(parts)"
        end
    end
    return ""
end


-- Deterministic unit vector for a text: each word adds a pseudo-random
-- vector seeded by its hash, so texts sharing words come out close.
local function embed_text(text, dims)
    local v = ffi.new("float[?]", dims)
    for w in gmatch(string.lower(text), "%w+") do
        local h = 2166136261
        for i = 1, #w do h = bit.tobit(bit.bxor(h, byte(w, i)) * 16777619) end
        for d = 0, dims - 1 do
            h = bit.tobit(bit.bxor(h, bit.lshift(h, 13)))
            h = bit.tobit(bit.bxor(h, bit.rshift(h, 17)))
            h = bit.tobit(bit.bxor(h, bit.lshift(h, 5)))
            v[d] = v[d] + (h % 2001 - 1000) / 1000
        end
    end
    local norm = 0
    for d = 0, dims - 1 do norm = norm + v[d] * v[d] end
    norm = sqrt(norm)
    if norm > 0 then
        for d = 0, dims - 1 do v[d] = v[d] / norm end
    end
    return v
end
_M.embed_text = embed_text


--- A mock client. opts: replies (list), default (reply or function(req)),
-- name ("mock"), model ("mock-model"), dims (embedding size, 64), and the
-- usual client options (retry, prices...).
function _M.new(opts, llm)
    local c = setmetatable({
        name = opts.name or "mock", type = "mock", model = opts.model or "mock-model",
        embed_model = opts.embed_model or "mock-embedding",
        retry = opts.retry, prices = opts.prices, timeout = opts.timeout,
        dims = opts.dims or 64,
        replies = {}, requests = {}, default = opts.default,
    }, llm._client_mt)
    llm._pacing(c, opts)
    for _, r in ipairs(opts.replies or {}) do c.replies[#c.replies + 1] = r end

    --- Queue more replies; returns the client.
    function c.script(self, ...)
        for i = 1, select("#", ...) do self.replies[#self.replies + 1] = (select(i, ...)) end
        return self
    end

    --- Replies still queued.
    function c.pending(self)
        return #self.replies
    end

    c._once = function(self, req)
        self.requests[#self.requests + 1] = req
        local reply = remove(self.replies, 1)
        if reply == nil then
            reply = self.default or ("mock reply to: " .. last_user_text(req))
        end
        if type(reply) == "function" then reply = reply(req) end
        if type(reply) == "string" then reply = { content = reply } end
        if type(reply) ~= "table" then
            error("sibyl.llm.mock: a reply must be a string, a table or a function returning one", 0)
        end
        if reply.delay then sibyl.sleep(reply.delay) end
        if reply.error then
            local e = reply.error
            return nil, sibyl.error(e.kind or "http", format("%s: %s", self.name, e.message or "scripted error"),
                                    { status = e.status, retry_after = e.retry_after, quota = e.quota,
                                      provider = self.name })
        end
        local calls = {}
        for i, tc in ipairs(reply.tool_calls or {}) do
            local args = tc.arguments or {}
            local raw = type(args) == "string" and args or require("sibyl.json").encode(args)
            if type(args) == "string" then args = require("sibyl.json").decode(args) end
            calls[i] = { id = tc.id or ("call_" .. i), name = tc.name, arguments = args, raw_arguments = raw }
        end
        local content = reply.content or ""
        if req.stream then
            local stopped, sent = false, {}
            for w in gmatch(content, "%S+%s*") do
                sent[#sent + 1] = w
                if req.stream({ type = "text", text = w }) == false then
                    stopped = true
                    break
                end
            end
            for i, call in ipairs(calls) do
                if stopped then break end
                if req.stream({ type = "tool_call", index = i, id = call.id, name = call.name,
                                delta = call.raw_arguments, partial = call.raw_arguments }) == false then
                    stopped = true
                end
            end
            if stopped then
                reply = { finish_reason = "stopped" }
                content = concat(sent)                  -- what the caller received, as real streams do
            end
        end
        local input = 0
        for _, m in ipairs(req.messages) do
            input = input + words(type(m.content) == "string" and m.content or "")
        end
        local usage = { input = input, output = words(content) }
        if reply.usage then
            for k, v in pairs(reply.usage) do usage[k] = v end
        end
        usage.total = usage.input + usage.output
        return {
            content = content,
            tool_calls = calls,
            finish_reason = reply.finish_reason or (#calls > 0 and "tool_calls" or "stop"),
            usage = usage,
            model = reply.model or req.model,
            id = "mock-" .. #self.requests,
        }
    end

    c._embed_once = function(self, req)
        self.requests[#self.requests + 1] = req
        local items, n = {}, 0
        for i, text in ipairs(req.input) do
            local v = embed_text(tostring(text), req.dimensions or self.dims)
            local t = {}
            for d = 0, (req.dimensions or self.dims) - 1 do t[d + 1] = v[d] end
            items[i] = { index = i - 1, embedding = t }
            n = n + words(tostring(text))
        end
        return { items = items, usage = { input = n, output = 0 }, model = req.model }
    end

    return c
end


return _M
