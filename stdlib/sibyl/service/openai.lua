-- sibyl.service.openai -- the OpenAI chat-completions wire format for
-- sibyl.service: error bodies, request validation, replies and stream
-- chunks. Pure functions, no I/O.
--
-- Caveats:
--  * Content parts other than text (images, audio, files) are refused with
--    400; text parts are joined with "\n".
--  * Client-side tools (`tools`, `tool_choice`) are not supported: the
--    served agent's own tools run on the server. Assistant tool calls and
--    tool messages in the history are passed on to the agent as they are.

local json = require "sibyl.json"

local type, ipairs, pairs, tostring, tonumber, next = type, ipairs, pairs, tostring, tonumber, next
local format, concat, byte = string.format, table.concat, string.byte
local floor, ceil = math.floor, math.ceil
local random_bytes = require("sibyl").random_bytes

local _M = { _VERSION = "0.1.0" }

local null = json.null
_M.null = null

-- error.type by status, as OpenAI's API sends them
local ERROR_TYPE = {
    [400] = "invalid_request_error", [401] = "invalid_request_error", [404] = "invalid_request_error",
    [405] = "invalid_request_error", [413] = "invalid_request_error", [429] = "rate_limit_error",
}

local ROLES = { system = true, developer = true, user = true, assistant = true, tool = true }


-- ---------------------------------------------------------------- errors

--- A response {status, headers, body = JSON string} with the OpenAI error
-- shape {"error": {message, type, param, code}}. headers (optional) are
-- added to the reply.
function _M.error(status, message, code, param, headers)
    local h = { ["Content-Type"] = "application/json" }
    for k, v in pairs(headers or {}) do h[k] = v end
    return { status = status, headers = h, body = _M.error_body(status, message, code, param) }
end


function _M.error_body(status, message, code, param)
    return json.encode{ error = {
        message = tostring(message),
        type = ERROR_TYPE[status] or (status >= 500 and "server_error" or "invalid_request_error"),
        param = param or null,
        code = code or null,
    } }
end


--- Status, message, code and extra headers for an agent's failure (an error
-- object with `kind`, or a sanitizer's list of findings).
function _M.failure(err)
    if type(err) ~= "table" then
        return 500, tostring(err), "agent_error"
    end
    local kind = err.kind
    local msg = tostring(err.message or kind or "the agent failed")
    if kind == nil and err[1] ~= nil then
        return 400, "the input was rejected by the server's content filter", "content_rejected"
    end
    if kind == "timeout" or (kind == "budget" and err.budget == "seconds") then
        return 504, msg, "timeout"
    end
    if kind == "rate_limited" then
        local h = err.retry_after and { ["Retry-After"] = tostring(ceil(tonumber(err.retry_after) or 1)) }
        return 429, msg, "rate_limit_exceeded", h
    end
    if kind == "budget" or kind == "max_steps" then
        return 500, msg, kind
    end
    if kind == "http" or kind == "connect" or kind == "auth" or kind == "parse" or kind == "quota" then
        return 502, msg, "upstream_error"
    end
    return 500, msg, kind and tostring(kind) or "agent_error"
end


-- ------------------------------------------------------------ validation

local function text_of(content, i)
    if content == nil or content == null then return "" end
    if type(content) == "string" then return content end
    if type(content) == "table" then
        local parts = {}
        for j, p in ipairs(content) do
            if type(p) ~= "table" or p.type ~= "text" or type(p.text) ~= "string" then
                return nil, format("messages[%d].content[%d]: only text parts are supported", i - 1, j - 1)
            end
            parts[#parts + 1] = p.text
        end
        return concat(parts, "\n")
    end
    return nil, format("messages[%d].content must be a string or a list of text parts", i - 1)
end


-- An assistant message's tool_calls in sibyl's shape {id, name, arguments, raw_arguments}.
local function tool_calls_of(calls, i)
    if calls == nil or calls == null then return nil end
    if type(calls) ~= "table" then
        return nil, format("messages[%d].tool_calls must be a list", i - 1)
    end
    local out = {}
    for j, tc in ipairs(calls) do
        local fn = type(tc) == "table" and tc["function"]
        if type(fn) ~= "table" or type(fn.name) ~= "string" then
            return nil, format("messages[%d].tool_calls[%d] needs function.name", i - 1, j - 1)
        end
        local raw = type(fn.arguments) == "string" and fn.arguments or "{}"
        out[j] = { id = tc.id, name = fn.name, arguments = json.decode(raw), raw_arguments = raw }
    end
    return #out > 0 and out or nil
end


--- Check a decoded request body against the limits. Returns the request
-- {model, messages (normalized {role, content, ...}), stream, include_usage,
-- temperature, max_tokens, user}, or nil, message, param.
function _M.parse_request(body, limits)
    if type(body) ~= "table" or body[1] ~= nil then
        return nil, "the request body must be a JSON object", nil
    end
    local model = body.model
    if model ~= nil and model ~= null and type(model) ~= "string" then
        return nil, "'model' must be a string", "model"
    end
    local msgs = body.messages
    if msgs == nil or msgs == null then
        return nil, "'messages' is a required property", "messages"
    end
    if type(msgs) ~= "table" or (next(msgs) ~= nil and msgs[1] == nil) then
        return nil, "'messages' must be an array", "messages"
    end
    if #msgs == 0 then
        return nil, "'messages' must hold at least one message", "messages"
    end
    if #msgs > limits.max_messages then
        return nil, format("'messages' holds %d messages; the limit is %d", #msgs, limits.max_messages), "messages"
    end
    local out = {}
    for i, m in ipairs(msgs) do
        if type(m) ~= "table" then
            return nil, format("messages[%d] must be an object", i - 1), "messages"
        end
        if type(m.role) ~= "string" or not ROLES[m.role] then
            return nil, format("messages[%d].role must be one of system, developer, user, assistant, tool; got %s",
                               i - 1, type(m.role) == "string" and format("%q", m.role) or type(m.role)), "messages"
        end
        local text, terr = text_of(m.content, i)
        if not text then return nil, terr, "messages" end
        if #text > limits.max_content then
            return nil, format("messages[%d].content is %d bytes; the limit is %d", i - 1, #text, limits.max_content),
                   "messages"
        end
        local calls, cerr = tool_calls_of(m.tool_calls, i)
        if cerr then return nil, cerr, "messages" end
        local role = m.role == "developer" and "system" or m.role
        out[i] = { role = role, content = text, tool_calls = calls,
                   tool_call_id = type(m.tool_call_id) == "string" and m.tool_call_id or nil,
                   name = type(m.name) == "string" and m.name or nil }
    end
    if out[#out].role ~= "user" then
        return nil, format("the last message must come from the user (got %q)", out[#out].role), "messages"
    end
    local stream = body.stream
    if stream ~= nil and stream ~= null and type(stream) ~= "boolean" then
        return nil, "'stream' must be a boolean", "stream"
    end
    local so = body.stream_options
    if so ~= nil and so ~= null and type(so) ~= "table" then
        return nil, "'stream_options' must be an object", "stream_options"
    end
    for _, k in ipairs{ "temperature", "max_tokens", "max_completion_tokens" } do
        local v = body[k]
        if v ~= nil and v ~= null and type(v) ~= "number" then
            return nil, format("'%s' must be a number", k), k
        end
    end
    local function opt(v) if v ~= null then return v end end
    return {
        model = opt(model), messages = out, stream = stream == true,
        include_usage = stream == true and type(so) == "table" and so.include_usage == true,
        temperature = opt(body.temperature), max_tokens = opt(body.max_completion_tokens) or opt(body.max_tokens),
        user = type(body.user) == "string" and body.user or nil,
    }
end


-- --------------------------------------------------------------- replies

local ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

--- "chatcmpl-" and 24 random letters and digits.
function _M.completion_id()
    local raw = random_bytes(24)
    local out = {}
    for i = 1, 24 do
        local k = byte(raw, i) % #ALNUM + 1
        out[i] = ALNUM:sub(k, k)
    end
    return "chatcmpl-" .. concat(out)
end


local function usage_of(u)
    u = u or {}
    local p, c = floor(tonumber(u.input) or 0), floor(tonumber(u.output) or 0)
    return { prompt_tokens = p, completion_tokens = c, total_tokens = p + c }
end
_M.usage = usage_of


--- The non-streaming reply: a chat.completion object. st = {id, created,
-- model}; result = {content, usage = {input, output}, finish_reason}.
function _M.completion(st, result)
    return {
        id = st.id, object = "chat.completion", created = st.created, model = st.model,
        system_fingerprint = null,
        choices = { {
            index = 0,
            message = { role = "assistant", content = result.content or "", refusal = null },
            logprobs = null,
            finish_reason = result.finish_reason or "stop",
        } },
        usage = usage_of(result.usage),
    }
end


--- One chat.completion.chunk with `delta` (a table) and finish_reason
-- (nil for none). With st.include_usage every chunk carries usage = null,
-- as OpenAI's do.
function _M.chunk(st, delta, finish_reason)
    local c = {
        id = st.id, object = "chat.completion.chunk", created = st.created, model = st.model,
        system_fingerprint = null,
        choices = { { index = 0, delta = delta, logprobs = null, finish_reason = finish_reason or null } },
    }
    if st.include_usage then c.usage = null end
    return c
end


--- The last chunk when stream_options.include_usage: no choices, the usage.
function _M.usage_chunk(st, usage)
    return {
        id = st.id, object = "chat.completion.chunk", created = st.created, model = st.model,
        system_fingerprint = null, choices = json.empty_array, usage = usage_of(usage),
    }
end


--- GET /v1/models
function _M.models(names, created)
    local data = {}
    for i, name in ipairs(names) do
        data[i] = { id = name, object = "model", created = created, owned_by = "sibyl" }
    end
    return { object = "list", data = json.array(data) }
end


return _M
