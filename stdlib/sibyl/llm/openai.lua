-- sibyl.llm.openai -- the OpenAI chat-completions dialect: any compatible
-- endpoint (OpenAI, Ollama, llama.cpp server, vLLM, LM Studio, OpenRouter).
--
-- A dialect turns sibyl.llm's normalised request into the wire body, and
-- the wire reply (JSON or SSE events) back into the normalised result. It
-- does no I/O; sibyl.llm drives the HTTP side, retries and accounting.
--
-- Normalised messages: { role = "system"|"user"|"assistant"|"tool",
-- content = string or parts, tool_calls = { {id, name, arguments} },
-- tool_call_id = id }. Parts pass through unchanged (OpenAI's format).

local json = require "sibyl.json"

local type, pairs, ipairs, tostring, tonumber = type, pairs, ipairs, tostring, tonumber
local concat = table.concat
local json_encode, json_decode, null = json.encode, json.decode, json.null

local _M = { name = "openai" }

_M.defaults = {
    base_url = "https://api.openai.com/v1",
    model = "gpt-4o-mini",
    embed_model = "text-embedding-3-small",
    key_env = "OPENAI_API_KEY",
}


local function wire_tool_calls(calls)
    local out = {}
    for i, c in ipairs(calls) do
        local args = c.arguments
        if args == nil and type(c.raw_arguments) == "string" then
            args = c.raw_arguments          -- what the model wrote, even if it was not valid JSON
        elseif type(args) ~= "string" then
            args = json_encode(args or {})
        end
        out[i] = { id = c.id, type = "function", ["function"] = { name = c.name, arguments = args } }
    end
    return out
end


local function wire_messages(req)
    if not req.system then
        local plain = true
        for _, m in ipairs(req.messages) do
            if m.tool_calls or m.role == "tool" then
                plain = false
                break
            end
        end
        if plain then return req.messages end  -- already OpenAI's shape: no copy
    end
    local out, n = {}, 0
    if req.system then
        n = n + 1
        out[n] = { role = "system", content = req.system }
    end
    for _, m in ipairs(req.messages) do
        n = n + 1
        if m.tool_calls and m.role == "assistant" then
            out[n] = { role = "assistant", content = m.content or null, tool_calls = wire_tool_calls(m.tool_calls) }
        elseif m.role == "tool" then
            local content = m.content
            if type(content) ~= "string" then content = json_encode(content) end
            out[n] = { role = "tool", tool_call_id = m.tool_call_id, content = content }
        else
            out[n] = m
        end
    end
    return out
end


local function wire_tools(tools)
    local out = {}
    for i, t in ipairs(tools) do
        out[i] = { type = "function", ["function"] = {
            name = t.name, description = t.description, parameters = t.parameters or { type = "object", properties = {} },
        } }
    end
    return out
end


local function wire_tool_choice(tc)
    if tc == nil or tc == "auto" or tc == "none" or tc == "required" then return tc end
    return { type = "function", ["function"] = { name = tc.name } }
end


--- The HTTP request for a chat: url, body table.
function _M.chat_request(p, req)
    local body = {
        model = req.model,
        messages = wire_messages(req),
        temperature = req.temperature,
        top_p = req.top_p,
        stop = req.stop,
        seed = req.seed,
        max_tokens = req.max_tokens,
        tool_choice = req.tools and wire_tool_choice(req.tool_choice) or nil,
        parallel_tool_calls = req.tools and req.parallel_tool_calls,
    }
    if req.tools then body.tools = wire_tools(req.tools) end
    if req.schema then
        body.response_format = { type = "json_schema", json_schema = {
            name = req.schema_name or "reply", schema = req.schema, strict = req.strict or nil } }
    elseif req.response_format == "json" then
        body.response_format = { type = "json_object" }
    elseif type(req.response_format) == "table" then
        body.response_format = req.response_format
    end
    if req.stream then
        body.stream = true
        if p.stream_usage ~= false then body.stream_options = { include_usage = true } end
    end
    if req.extra then
        for k, v in pairs(req.extra) do body[k] = v end
    end
    return p.base_url .. "/chat/completions", body
end


--- Headers for every request of this provider.
function _M.headers(p, key)
    local h = {}
    if key then h.Authorization = "Bearer " .. key end
    if p.headers then
        for k, v in pairs(p.headers) do h[k] = v end
    end
    return h
end


-- Decode a tool call's arguments string: table, or nil plus a message.
local function decode_args(s)
    if s == nil or s == "" then return {} end
    local v, err = json_decode(s)
    if v == nil or type(v) ~= "table" then
        return nil, err and err.message or "arguments are not a JSON object"
    end
    return v
end
_M.decode_args = decode_args


local function norm_usage(u)
    if type(u) ~= "table" then return nil end
    local i, o = u.prompt_tokens or 0, u.completion_tokens or 0
    return { input = i, output = o, total = u.total_tokens or (i + o) }
end


--- A decoded chat.completion -> normalised result, or nil, message.
function _M.parse_chat(data)
    local choice = type(data) == "table" and type(data.choices) == "table" and data.choices[1]
    if type(choice) ~= "table" or type(choice.message) ~= "table" then
        return nil, "the reply has no choices[1].message"
    end
    local msg = choice.message
    local calls = {}
    if type(msg.tool_calls) == "table" then
        for i, c in ipairs(msg.tool_calls) do
            local f = c["function"] or {}
            local args, aerr = decode_args(f.arguments)
            calls[i] = { id = c.id, name = f.name, arguments = args, raw_arguments = f.arguments, error = aerr }
        end
    elseif type(msg.function_call) == "table" then          -- the legacy form
        local f = msg.function_call
        local args, aerr = decode_args(f.arguments)
        calls[1] = { id = "call_0", name = f.name, arguments = args, raw_arguments = f.arguments, error = aerr }
    end
    local content = msg.content
    if content == null or content == nil then content = "" end
    local reason = choice.finish_reason
    if reason == null then reason = nil end
    if reason == "function_call" then reason = "tool_calls" end
    return {
        content = content,
        tool_calls = calls,
        finish_reason = reason,
        usage = norm_usage(data.usage),
        model = data.model,
        id = data.id,
        raw = data,
    }
end


-- ---------------------------------------------------------------- streams

--- A new stream state; events are fed to stream_event.
function _M.stream_begin()
    return { text = {}, calls = {}, ncalls = 0 }
end


--- Feed one SSE event. emit(delta) reports deltas to the caller and returns
-- false to stop. Returns "done" at the end, "stop" when emit said so,
-- nil to go on, or nil, err_kind, message.
function _M.stream_event(st, ev, emit)
    local data = ev.data
    if data == "[DONE]" then return "done" end
    if data == nil or data == "" then return nil end
    local d, derr = json_decode(data)
    if type(d) ~= "table" then
        return nil, "parse", "a stream event is not JSON (" .. (derr and derr.message or "not an object") .. ")"
    end
    if d.error and d.error ~= null then
        local e = d.error
        return nil, "stream_error", type(e) == "table" and tostring(e.message or e.type) or tostring(e), e
    end
    st.model = st.model or d.model
    st.id = st.id or d.id
    if type(d.usage) == "table" then st.usage = norm_usage(d.usage) end
    local choice = type(d.choices) == "table" and d.choices[1]
    if type(choice) ~= "table" then return nil end
    if choice.finish_reason and choice.finish_reason ~= null then st.finish_reason = choice.finish_reason end
    local delta = choice.delta
    if type(delta) ~= "table" then return nil end
    local text = delta.content
    if type(text) == "string" and text ~= "" then
        st.text[#st.text + 1] = text
        if emit({ type = "text", text = text }) == false then return "stop" end
    end
    if type(delta.tool_calls) == "table" then
        for _, tc in ipairs(delta.tool_calls) do
            local idx = (tonumber(tc.index) or 0) + 1
            local call = st.calls[idx]
            if not call then
                call = { id = nil, name = nil, pieces = {}, partial = "" }
                st.calls[idx] = call
                if idx > st.ncalls then st.ncalls = idx end
            end
            if tc.id and tc.id ~= null then call.id = tc.id end
            local f = tc["function"]
            if type(f) == "table" then
                if type(f.name) == "string" and f.name ~= "" then call.name = (call.name or "") .. f.name end
                local piece = f.arguments
                if type(piece) == "string" and piece ~= "" then
                    call.pieces[#call.pieces + 1] = piece
                    call.partial = call.partial .. piece
                end
                if emit({ type = "tool_call", index = idx, id = call.id, name = call.name,
                          delta = piece or "", partial = call.partial }) == false then
                    return "stop"
                end
            end
        end
    end
    return nil
end


--- The normalised result of a finished (or stopped) stream.
function _M.stream_result(st)
    local calls = {}
    for i = 1, st.ncalls do
        local c = st.calls[i]
        if c then
            local raw = concat(c.pieces)
            local args, aerr = decode_args(raw)
            calls[#calls + 1] = { id = c.id or ("call_" .. i), name = c.name, arguments = args,
                                  raw_arguments = raw, error = aerr }
        end
    end
    local reason = st.finish_reason
    if reason == "function_call" then reason = "tool_calls" end
    return {
        content = concat(st.text),
        tool_calls = calls,
        finish_reason = reason,
        usage = st.usage,
        model = st.model,
        id = st.id,
    }
end


-- ------------------------------------------------------------ errors

--- The provider's error object in a decoded error body: message, code, type.
function _M.error_info(data)
    local e = type(data) == "table" and data.error
    if type(e) == "table" then
        local code = e.code
        if code == null then code = nil end
        return e.message ~= null and e.message or nil, code and tostring(code), e.type ~= null and e.type or nil
    elseif type(e) == "string" then
        return e
    end
    return nil
end


-- ------------------------------------------------------------ embeddings

function _M.embed_request(p, req)
    return p.base_url .. "/embeddings", {
        model = req.model, input = req.input, dimensions = req.dimensions,
        encoding_format = req.encoding_format,
    }
end


--- A decoded embeddings reply -> list of {index, embedding}, usage.
function _M.parse_embed(data)
    if type(data) ~= "table" or type(data.data) ~= "table" then
        return nil, "the reply has no data list"
    end
    local u = data.usage
    return data.data, type(u) == "table" and { input = u.prompt_tokens or u.total_tokens or 0, output = 0 } or nil
end


return _M
