-- sibyl.llm.anthropic -- the Anthropic Messages API dialect (see
-- sibyl/llm/openai.lua for what a dialect does).
--
-- Differences it hides: the system prompt is a field, not a message; tool
-- calls are `tool_use` content blocks and their results `tool_result`
-- blocks inside a user message; max_tokens is required; streams are typed
-- events (message_start, content_block_*, message_delta, message_stop).

local json = require "sibyl.json"

local type, pairs, ipairs, tostring, tonumber = type, pairs, ipairs, tostring, tonumber
local concat = table.concat
local json_encode, json_decode, null = json.encode, json.decode, json.null

local _M = { name = "anthropic" }

_M.defaults = {
    base_url = "https://api.anthropic.com/v1",
    model = "claude-haiku-4-5",
    key_env = "ANTHROPIC_API_KEY",
    version = "2023-06-01",
    max_tokens = 4096,          -- the API requires one
}

-- stop_reason -> the normalised finish_reason (OpenAI's words)
local FINISH = {
    end_turn = "stop", stop_sequence = "stop", max_tokens = "length",
    tool_use = "tool_calls", refusal = "content_filter", pause_turn = "pause",
}


local function text_of(content)
    if type(content) == "string" then return content end
    if type(content) ~= "table" then return "" end
    local parts = {}
    for _, b in ipairs(content) do
        if type(b) == "table" and b.type == "text" then parts[#parts + 1] = b.text end
    end
    return concat(parts)
end


-- Normalised messages -> Anthropic's messages and the system text.
local function wire_messages(req)
    local system = { req.system }
    local out = {}
    for _, m in ipairs(req.messages) do
        local role = m.role
        if role == "system" then
            system[#system + 1] = text_of(m.content)
        elseif role == "tool" then
            local content = m.content
            if type(content) ~= "string" then content = json_encode(content) end
            local block = { type = "tool_result", tool_use_id = m.tool_call_id, content = content,
                            is_error = m.is_error or nil }
            local last = out[#out]
            if last and last.role == "user" and last._results then
                last.content[#last.content + 1] = block      -- results of parallel calls go together
            else
                out[#out + 1] = { role = "user", content = { block }, _results = true }
            end
        elseif role == "assistant" and m.tool_calls then
            local blocks = {}
            local text = text_of(m.content)
            if text ~= "" then blocks[1] = { type = "text", text = text } end
            for _, c in ipairs(m.tool_calls) do
                local args = c.arguments
                if type(args) == "string" then args = json_decode(args) end
                if type(args) ~= "table" then args = {} end           -- {} encodes as an object
                blocks[#blocks + 1] = { type = "tool_use", id = c.id, name = c.name, input = args }
            end
            out[#out + 1] = { role = "assistant", content = blocks }
        else
            out[#out + 1] = { role = role, content = m.content }
        end
    end
    for _, m in ipairs(out) do m._results = nil end
    local sys = concat(system, "\n\n")
    return out, sys ~= "" and sys or nil
end


local function wire_tools(tools)
    local out = {}
    for i, t in ipairs(tools) do
        out[i] = { name = t.name, description = t.description,
                   input_schema = t.parameters or { type = "object", properties = {} } }
    end
    return out
end


local function wire_tool_choice(tc, parallel)
    local out
    if tc == nil or tc == "auto" then out = { type = "auto" }
    elseif tc == "none" then out = { type = "none" }
    elseif tc == "required" then out = { type = "any" }
    else out = { type = "tool", name = tc.name } end
    if parallel == false then out.disable_parallel_tool_use = true end
    return out
end


function _M.chat_request(p, req)
    local messages, system = wire_messages(req)
    if req.schema then
        -- No response_format here: ask for the JSON in words; sibyl.llm
        -- validates it and repairs it if needed.
        local ask = "Reply with only a JSON value (no prose, no code fences) that matches this JSON Schema:\n"
            .. json_encode(req.schema)
        system = system and (system .. "\n\n" .. ask) or ask
    elseif req.response_format == "json" then
        local ask = "Reply with only a JSON object, no prose and no code fences."
        system = system and (system .. "\n\n" .. ask) or ask
    end
    local body = {
        model = req.model,
        messages = messages,
        system = system,
        max_tokens = req.max_tokens or p.max_tokens or _M.defaults.max_tokens,
        temperature = req.temperature,
        top_p = req.top_p,
        stop_sequences = type(req.stop) == "string" and { req.stop } or req.stop,
        stream = req.stream and true or nil,
    }
    if req.tools then
        body.tools = wire_tools(req.tools)
        body.tool_choice = wire_tool_choice(req.tool_choice, req.parallel_tool_calls)
    end
    if req.extra then
        for k, v in pairs(req.extra) do body[k] = v end
    end
    return p.base_url .. "/messages", body
end


function _M.headers(p, key)
    local h = { ["anthropic-version"] = p.version or _M.defaults.version }
    if key then h["x-api-key"] = key end
    if p.headers then
        for k, v in pairs(p.headers) do h[k] = v end
    end
    return h
end


local function norm_usage(u, into)
    if type(u) ~= "table" then return into end
    into = into or { input = 0, output = 0, total = 0 }
    if type(u.input_tokens) == "number" then
        into.input = u.input_tokens + (tonumber(u.cache_read_input_tokens) or 0)
            + (tonumber(u.cache_creation_input_tokens) or 0)
    end
    if type(u.output_tokens) == "number" then into.output = u.output_tokens end
    into.total = into.input + into.output
    return into
end


local function decode_args(v)
    if type(v) == "table" then return v end
    local t, err = json_decode(v or "{}")
    if type(t) ~= "table" then return nil, err and err.message or "input is not a JSON object" end
    return t
end


function _M.parse_chat(data)
    if type(data) ~= "table" or type(data.content) ~= "table" then
        return nil, "the reply has no content list"
    end
    local text, calls = {}, {}
    for _, b in ipairs(data.content) do
        if type(b) == "table" then
            if b.type == "text" then
                text[#text + 1] = b.text
            elseif b.type == "tool_use" then
                calls[#calls + 1] = { id = b.id, name = b.name, arguments = decode_args(b.input),
                                      raw_arguments = json_encode(b.input or {}) }
            end
        end
    end
    return {
        content = concat(text),
        tool_calls = calls,
        finish_reason = FINISH[data.stop_reason] or data.stop_reason,
        usage = norm_usage(data.usage),
        model = data.model,
        id = data.id,
        raw = data,
    }
end


-- ---------------------------------------------------------------- streams

function _M.stream_begin()
    return { text = {}, blocks = {}, order = {} }
end


function _M.stream_event(st, ev, emit)
    local kind = ev.event
    if kind == "ping" or ev.data == nil or ev.data == "" then return nil end
    local d, derr = json_decode(ev.data)
    if type(d) ~= "table" then
        return nil, "parse", "a stream event is not JSON (" .. (derr and derr.message or "not an object") .. ")"
    end
    kind = kind or d.type
    if kind == "message_start" then
        local m = d.message or {}
        st.model, st.id = m.model, m.id
        st.usage = norm_usage(m.usage, st.usage)
    elseif kind == "content_block_start" then
        local b = d.content_block or {}
        local idx = (tonumber(d.index) or #st.order) + 1
        local block = { type = b.type, id = b.id, name = b.name, pieces = {}, partial = "" }
        st.blocks[idx] = block
        st.order[#st.order + 1] = idx
        if b.type == "text" and type(b.text) == "string" and b.text ~= "" then
            st.text[#st.text + 1] = b.text
            if emit({ type = "text", text = b.text }) == false then return "stop" end
        end
    elseif kind == "content_block_delta" then
        local idx = (tonumber(d.index) or 0) + 1
        local block = st.blocks[idx]
        local delta = d.delta or {}
        if delta.type == "text_delta" then
            st.text[#st.text + 1] = delta.text
            if emit({ type = "text", text = delta.text }) == false then return "stop" end
        elseif delta.type == "input_json_delta" and block then
            local piece = delta.partial_json or ""
            block.pieces[#block.pieces + 1] = piece
            block.partial = block.partial .. piece
            local n = 0
            for _, i in ipairs(st.order) do
                if st.blocks[i].type == "tool_use" then n = n + 1 end
                if i == idx then break end
            end
            if emit({ type = "tool_call", index = n, id = block.id, name = block.name,
                      delta = piece, partial = block.partial }) == false then
                return "stop"
            end
        end
    elseif kind == "message_delta" then
        local delta = d.delta or {}
        if delta.stop_reason and delta.stop_reason ~= null then st.stop_reason = delta.stop_reason end
        st.usage = norm_usage(d.usage, st.usage)
    elseif kind == "message_stop" then
        return "done"
    elseif kind == "error" then
        local e = d.error or {}
        return nil, "stream_error", tostring(e.message or e.type or "error event"), e
    end
    return nil
end


function _M.stream_result(st)
    local calls = {}
    for _, i in ipairs(st.order) do
        local b = st.blocks[i]
        if b.type == "tool_use" then
            local raw = concat(b.pieces)
            if raw == "" then raw = "{}" end
            local args, aerr = decode_args(raw)
            calls[#calls + 1] = { id = b.id, name = b.name, arguments = args, raw_arguments = raw, error = aerr }
        end
    end
    return {
        content = concat(st.text),
        tool_calls = calls,
        finish_reason = FINISH[st.stop_reason] or st.stop_reason,
        usage = st.usage,
        model = st.model,
        id = st.id,
    }
end


function _M.error_info(data)
    local e = type(data) == "table" and data.error
    if type(e) == "table" then
        return e.message, nil, e.type
    end
    return nil
end


function _M.embed_request()
    return nil, "Anthropic has no embeddings API; configure an OpenAI-compatible provider for llm.embed"
end


return _M
