-- 07-sse_spec.lua -- sibyl.sse (runtime/src/sse.c): the WHATWG event-stream
-- parser the HTTP client feeds response bytes to.
--
-- Run with `sibyl test tests/lua/07-sse_spec.lua`. Recorded streams live in
-- tests/fixtures/sse/; each one is parsed whole, byte by byte, split at every
-- point into two chunks and cut at random points into many chunks, and every
-- way must give the same events as a plain (non-incremental) reference
-- parser written from the spec below.

local sse = require "sibyl.sse"
local cjson = require "cjson"

local here = debug.getinfo(1, "S").source:match("^@(.*[/\\])") or "tests/lua/"
local FIXTURES = here .. "../fixtures/sse/"

local BOM = "\239\187\191"


local function read_fixture(name)
    local f = assert(io.open(FIXTURES .. name, "rb"))
    local text = f:read("*a")
    f:close()
    return text
end


-- Feed chunks to a fresh parser; return all events. Fails the test on error.
local function parse_chunks(chunks, opts)
    local p = sse.parser(opts)
    local all = {}
    for i, chunk in ipairs(chunks) do
        local events, err = p:feed(chunk)
        if not events then
            error("feed #" .. i .. ": " .. tostring(err), 2)
        end
        for _, ev in ipairs(events) do
            all[#all + 1] = ev
        end
    end
    p:close()
    return all
end


local function parse(text, opts)
    return parse_chunks({ text }, opts)
end


-- One string per event list, so thousands of results compare quickly and a
-- mismatch prints readably. Also checks that events carry no other keys.
local function render(events)
    local out = {}
    for i, ev in ipairs(events) do
        for k in pairs(ev) do
            assert(k == "event" or k == "data" or k == "id" or k == "retry", "unexpected key " .. k)
        end
        out[i] = string.format("%q %q %s %s", ev.event, ev.data,
                               ev.id and string.format("%q", ev.id) or "-", tostring(ev.retry))
    end
    return table.concat(out, "\n")
end


-- The WHATWG rules applied to a whole stream at once, as literally as
-- possible: strip one BOM, cut lines at CRLF / LF / CR, drop the unfinished
-- last line, interpret each line.
local function reference(text)
    if text:sub(1, 3) == BOM then
        text = text:sub(4)
    end
    local events = {}
    local data, etype, last_id, retry = "", "", "", nil
    local pos = 1
    while true do
        local at = text:find("[\r\n]", pos)
        if not at then
            break
        end
        local line = text:sub(pos, at - 1)
        pos = text:sub(at, at + 1) == "\r\n" and at + 2 or at + 1
        if line == "" then
            if data == "" then
                etype = ""
            else
                events[#events + 1] = {
                    event = etype ~= "" and etype or "message",
                    data = data:sub(1, -2),
                    id = last_id ~= "" and last_id or nil,
                    retry = retry,
                }
                data, etype, retry = "", "", nil
            end
        elseif line:sub(1, 1) ~= ":" then
            local name, value = line:match("^([^:]*):(.*)$")
            if not name then
                name, value = line, ""
            end
            if value:sub(1, 1) == " " then
                value = value:sub(2)
            end
            if name == "event" then
                etype = value
            elseif name == "data" then
                data = data .. value .. "\n"
            elseif name == "id" then
                if not value:find("\0", 1, true) then
                    last_id = value
                end
            elseif name == "retry" then
                if value:match("^[0-9]+$") then
                    retry = tonumber(value)
                end
            end
        end
    end
    return events
end


local function ev(event, data, id, retry)
    return { event = event, data = data, id = id, retry = retry }
end


describe("sse: WHATWG examples", function()

    it("three messages, one of two lines", function()
        local text = "data: This is the first message.\n\n"
            .. "data: This is the second message, it\n"
            .. "data: has two lines.\n\n"
            .. "data: This is the third message.\n\n"
        assert.are.same({
            ev("message", "This is the first message."),
            ev("message", "This is the second message, it\nhas two lines."),
            ev("message", "This is the third message."),
        }, parse(text))
    end)

    it("named events", function()
        local text = "event: add\ndata: 73857293\n\n"
            .. "event: remove\ndata: 2153\n\n"
            .. "event: add\ndata: 113411\n\n"
        assert.are.same({
            ev("add", "73857293"), ev("remove", "2153"), ev("add", "113411"),
        }, parse(text))
    end)

    it("stock ticker: three data lines make one event", function()
        assert.are.same({ ev("message", "YHOO\n+2\n10") }, parse("data: YHOO\ndata: +2\ndata: 10\n\n"))
    end)

    it("comment, ids and a leading space kept after the stripped one", function()
        local text = ": test stream\n\n"
            .. "data: first event\nid: 1\n\n"
            .. "data:second event\nid\n\n"
            .. "data:  third event\n\n"
        assert.are.same({
            ev("message", "first event", "1"),
            ev("message", "second event"),      -- a bare `id` reset the last event ID
            ev("message", " third event"),
        }, parse(text))
    end)

    it("empty data, a lone newline, and a last block without blank line", function()
        local text = "data\n\ndata\ndata\n\ndata:"
        assert.are.same({ ev("message", ""), ev("message", "\n") }, parse(text))
    end)

    it("the space after the colon is optional", function()
        local events = parse("data:test\n\ndata: test\n\n")
        assert.are.same({ ev("message", "test"), ev("message", "test") }, events)
    end)
end)


describe("sse: lines and fields", function()

    it("joins multi-line data with \\n and strips only the final one", function()
        local events = parse("data: a\ndata:\ndata: b\ndata\ndata: \n\n")
        assert.are.same({ ev("message", "a\n\nb\n\n") }, events)
    end)

    it("ignores comment lines anywhere, of any length", function()
        local long = ":" .. string.rep("x", 100000) .. "\n"
        local text = ":ok\n" .. long .. "data: a\n: between\ndata: b\n" .. long .. "\n:\n\n"
        assert.are.same({ ev("message", "a\nb") }, parse(text, { max_event = 16 }))
        assert.are.same({}, parse(": only comments\n\n:\n\n"))
    end)

    it("gives the same events for LF, CRLF and lone CR line endings", function()
        local lf = "event: e\ndata: 1\ndata: 2\nid: 9\n\n:c\ndata: 3\n\n"
        local want = { ev("e", "1\n2", "9"), ev("message", "3", "9") }
        assert.are.same(want, parse(lf))
        assert.are.same(want, parse((lf:gsub("\n", "\r\n"))))
        assert.are.same(want, parse((lf:gsub("\n", "\r"))))
    end)

    it("treats a CR ending one chunk and an LF starting the next as one line ending", function()
        -- If the LF counted as a blank line on its own, "a" would be an event by itself.
        assert.are.same({ ev("message", "a\nb") }, parse_chunks({ "data: a\r", "\ndata: b\r\n\r\n" }))
        -- A stray blank line would also reset the event type set just before it.
        assert.are.same({ ev("e", "2") }, parse_chunks({ "event: e\r", "\ndata: 2\n\n" }))
        -- The CR of a blank line, then its LF in the next chunk.
        assert.are.same({ ev("message", "1"), ev("x", "2") },
                        parse_chunks({ "data: 1\r\n\r", "\nevent: x\r", "\n", "data: 2\r", "\n\r", "\n" }))
        -- A CR at the end of a chunk followed by anything but LF is a line end by itself.
        assert.are.same({ ev("message", "a\nb") }, parse_chunks({ "data: a\r", "data: b\r", "\r" }))
        -- CR CR LF: a line end, then a CRLF blank line -- one event, not two blank lines.
        assert.are.same({ ev("message", "a"), ev("message", "b") },
                        parse_chunks({ "data: a\r", "\r", "\ndata: b\n\n" }))
    end)

    it("treats a line without a colon as a field name with an empty value", function()
        assert.are.same({ ev("message", "") }, parse("data\n\n"))
        assert.are.same({ ev("message", "x") }, parse("event: a\nevent\ndata: x\n\n"))
        assert.are.same({ ev("message", "x", "1"), ev("message", "y") }, parse("id: 1\ndata: x\n\nid\ndata: y\n\n"))
    end)

    it("ignores unknown fields and is case-sensitive", function()
        local text = "Data: no\nfoo: bar\nevents: x\ndata : no\ndata: yes\nDATA\n\n"
        assert.are.same({ ev("message", "yes") }, parse(text))
    end)

    it("splits on the first colon only", function()
        assert.are.same({ ev("a:b", "x: y :z") }, parse("event: a:b\ndata: x: y :z\n\n"))
    end)

    it("uses message for a missing or empty event type, and resets it after each block", function()
        local text = "event: a\ndata: 1\n\ndata: 2\n\nevent:\ndata: 3\n\nevent: lost\n\ndata: 4\n\n"
        assert.are.same({ ev("a", "1"), ev("message", "2"), ev("message", "3"), ev("message", "4") },
                        parse(text))
    end)

    it("discards an event without its closing blank line", function()
        assert.are.same({}, parse("data: x\n"))
        assert.are.same({}, parse("data: x"))
        assert.are.same({ ev("message", "a") }, parse("data: a\n\ndata: b\n"))
        -- Nothing is dispatched before the blank line, whatever the chunks.
        local p = sse.parser()
        assert.are.same({}, p:feed("data: x\n"))
        assert.are.same({}, p:feed("data: y\n"))
        assert.are.same({ ev("message", "x\ny") }, p:feed("\n"))
        p:close()
    end)

    it("keeps NUL bytes and non-ASCII bytes in data as they are", function()
        local data = "a\0b caf\195\169 \255\254"
        assert.are.same({ ev("message", data) }, parse("data: " .. data .. "\n\n"))
    end)

    it("returns an empty array for an empty chunk or one that completes nothing", function()
        local p = sse.parser()
        assert.are.same({}, p:feed(""))
        assert.are.same({}, p:feed("data: x"))
        assert.are.same({}, p:feed(""))
        assert.are.same({ ev("message", "x") }, p:feed("\n\n"))
        p:close()
    end)
end)


describe("sse: byte order mark", function()

    it("ignores one BOM at the start of the stream", function()
        assert.are.same({ ev("message", "x") }, parse(BOM .. "data: x\n\n"))
    end)

    it("ignores a BOM split over chunks", function()
        assert.are.same({ ev("message", "x") }, parse_chunks({ "\239", "\187", "\191d", "ata: x\n\n" }))
        assert.are.same({ ev("message", "x") }, parse_chunks({ "\239\187", "\191", "data: x\n\n" }))
    end)

    it("ignores only one BOM, and only at the start", function()
        -- The second BOM becomes part of the field name, so the field is unknown.
        assert.are.same({}, parse(BOM .. BOM .. "data: x\n\n"))
        assert.are.same({ ev("message", "x") }, parse("data: x\n\n" .. BOM .. "data: y\n\n"))
        assert.are.same({ ev("message", BOM .. "x") }, parse("data: " .. BOM .. "x\n\n"))
    end)

    it("keeps the bytes of a partial BOM", function()
        assert.are.same({}, parse("\239\187data: x\n\n"))
        assert.are.same({}, parse_chunks({ "\239", "data: x\n\n" }))
        assert.are.same({ ev("message", "x") }, parse_chunks({ "\239\187", "\n", "data: x\n\n" }))
    end)
end)


describe("sse: last event ID", function()

    it("persists across events until changed", function()
        local text = "id: 1\ndata: a\n\ndata: b\n\nid: 2\ndata: c\n\ndata: d\n\n"
        assert.are.same({ ev("message", "a", "1"), ev("message", "b", "1"),
                          ev("message", "c", "2"), ev("message", "d", "2") }, parse(text))
    end)

    it("is set by an id in a block that dispatches nothing", function()
        assert.are.same({ ev("message", "a", "7") }, parse("id: 7\n\ndata: a\n\n"))
    end)

    it("is reset by an empty id and absent until one is set", function()
        local text = "data: a\n\nid: 5\ndata: b\n\nid:\ndata: c\n\n"
        assert.are.same({ ev("message", "a"), ev("message", "b", "5"), ev("message", "c") }, parse(text))
    end)

    it("ignores an id containing NUL", function()
        local text = "id: 1\ndata: a\n\nid: 2\0x\ndata: b\n\n"
        assert.are.same({ ev("message", "a", "1"), ev("message", "b", "1") }, parse(text))
        assert.are.same({ ev("message", "b", "1") }, parse_chunks({ "id: 1\nid: 2", "\0", "x\ndata: b\n\n" }))
    end)

    it("takes the last id of a block and keeps spaces after the first", function()
        assert.are.same({ ev("message", "x", "  b ") }, parse("id: a\nid:   b \ndata: x\n\n"))
    end)
end)


describe("sse: retry", function()

    it("reports a valid retry on the next dispatched event only", function()
        local text = "retry: 1500\ndata: a\n\ndata: b\n\n"
        assert.are.same({ ev("message", "a", nil, 1500), ev("message", "b") }, parse(text))
    end)

    it("ignores values that are not only ASCII digits", function()
        for _, v in ipairs({ "", "-5", "1.5", "12a", " 10", "1 ", "+3", "0x10", "\239\188\145" }) do
            local events = parse("retry: " .. v .. "\ndata: x\n\n")
            assert.are.same({ ev("message", "x") }, events, "retry value " .. string.format("%q", v))
        end
        assert.are.same({ ev("message", "x") }, parse("retry\ndata: x\n\n"))
    end)

    it("keeps the last valid value of a block", function()
        assert.are.same({ ev("message", "x", nil, 20) }, parse("retry: 10\nretry: 20\nretry: bad\ndata: x\n\n"))
        assert.are.same({ ev("message", "x", nil, 0) }, parse("retry: 0\ndata: x\n\n"))
    end)

    it("carries a retry-only block to the next event, and p:retry() shows it at once", function()
        local p = sse.parser()
        assert.is_nil(p:retry())
        assert.are.same({}, p:feed("retry: 5000\n\n"))
        assert.are.equal(5000, p:retry())
        assert.are.same({ ev("message", "x", nil, 5000) }, p:feed("data: x\n\n"))
        assert.are.same({ ev("message", "y") }, p:feed("retry: nope\ndata: y\n\n"))
        assert.are.equal(5000, p:retry())
        p:close()
    end)

    it("parses a retry split over chunks", function()
        assert.are.same({ ev("message", "x", nil, 12345) }, parse_chunks({ "ret", "ry:", " 12", "3", "45\nda", "ta: x\n\n" }))
        assert.are.same({ ev("message", "x") }, parse_chunks({ "retry: 12", "x3\ndata: x\n\n" }))
    end)
end)


describe("sse: limits and lifetime", function()

    it("returns too_large when one event's data exceeds max_event, naming the knob", function()
        local p = sse.parser({ max_event = 16 })
        local events, err = p:feed("data: 0123456789abcdef\n\n")
        assert.is_nil(events)
        assert.are.equal("too_large", err.kind)
        assert.matches("max_event %(16 bytes%)", err.message)
        assert.matches("sse.parser{max_event = N}", err.message, 1, true)
        assert.matches("^too_large: ", tostring(err))
        assert.are.same({}, err.events)
        -- Final: the stream cannot be resynchronised.
        local again, err2 = p:feed("data: x\n\n")
        assert.is_nil(again)
        assert.are.equal("too_large", err2.kind)
        p:close()
    end)

    it("counts data lines with their newlines, event type and id; exactly the limit passes", function()
        assert.are.same({ ev("message", "0123456789abcde") }, parse("data: 0123456789abcde\n\n", { max_event = 16 }))
        assert.are.same({ ev("message", "0123456\n0123456") },
                        parse("data: 0123456\ndata: 0123456\n\n", { max_event = 16 }))
        local _, err = sse.parser({ max_event = 16 }):feed("event: 0123456789\ndata: 012345\n\n")
        assert.are.equal("too_large", err.kind)
        _, err = sse.parser({ max_event = 16 }):feed("id: 01234567890123456\n")
        assert.are.equal("too_large", err.kind)
        -- The limit is per event: many events of the full size are fine.
        local many = string.rep("data: 0123456789abcde\n\n", 100)
        assert.are.equal(100, #parse(many, { max_event = 16 }))
    end)

    it("hands back the events completed before the error in err.events", function()
        local p = sse.parser({ max_event = 8 })
        local events, err = p:feed("data: a\n\ndata: b\n\ndata: 0123456789\n\n")
        assert.is_nil(events)
        assert.are.same({ ev("message", "a"), ev("message", "b") }, err.events)
        p:close()
    end)

    it("detects an event that grows too large over many chunks", function()
        local p = sse.parser({ max_event = 1000 })
        assert.are.same({}, p:feed("data: "))
        local err
        for _ = 1, 200 do
            local events
            events, err = p:feed("0123456789")
            if not events then
                break
            end
        end
        assert.are.equal("too_large", err.kind)
        p:close()
    end)

    it("handles a multi-megabyte event under the default limit", function()
        assert.are.equal(8 * 1024 * 1024, sse.DEFAULT_MAX_EVENT)
        local big = string.rep("0123456789abcdef", 262144)        -- 4 MiB
        local p = sse.parser()
        local chunks = {}
        for i = 1, #big, 65536 do
            chunks[#chunks + 1] = big:sub(i, i + 65535)
        end
        assert.are.same({}, p:feed("data: "))
        for _, c in ipairs(chunks) do
            assert.are.same({}, p:feed(c))
        end
        local events = p:feed("\n\n")
        assert.are.equal(1, #events)
        assert.is_true(events[1].data == big)
        p:close()
    end)

    it("answers nil, closed after close(); close() is idempotent", function()
        local p = sse.parser()
        assert.are.equal("sibyl.sse.parser", tostring(p))
        assert.is_true(p:close())
        assert.is_true(p:close())
        assert.are.equal("sibyl.sse.parser (closed)", tostring(p))
        local events, err = p:feed("data: x\n\n")
        assert.is_nil(events)
        assert.are.equal("closed", err.kind)
        local r, err2 = p:retry()
        assert.is_nil(r)
        assert.are.equal("closed", err2.kind)
    end)

    it("raises on misuse", function()
        local p = sse.parser()
        assert.has_error(function() p:feed() end)
        assert.has_error(function() p:feed({}) end)
        assert.has_error(function() p.feed({}, "x") end)
        assert.has_error(function() sse.parser("x") end)
        assert.has_error(function() sse.parser({ max_event = 0 }) end, "bad option opts.max_event (number >= 1 expected, got a smaller number)")
        assert.has_error(function() sse.parser({ max_event = "big" }) end, "bad option opts.max_event (number >= 1 expected, got string)")
        p:close()
    end)

    it("frees parsers left to the garbage collector", function()
        for _ = 1, 1000 do
            local p = sse.parser()
            p:feed("id: 1\nevent: e\ndata: unfinished")
        end
        collectgarbage()
        collectgarbage()
    end)
end)


describe("sse: the reference parser agrees on tricky inputs", function()
    -- Small hand-made streams, compared under every split as well.
    local cases = {
        "data: a\r\n\r\ndata: b\r\r\ndata: c\n\r\n",
        "\r\n\r\n\n\r\rdata: x\r\n\r\n",
        BOM .. "\r\ndata:\r\n\r\n",
        "id: 1\rid\rdata: x\r\rretry: 3\r\rdata: y\r\r",
        ":\r:\n:\r\n data: not data\r\nevent: e\r\n\r\ndata: z\n\n",
        "data: a\0b\nid: c\0d\nid: ok\nevent: \0\n\n",
    }
    for i, text in ipairs(cases) do
        it("case " .. i, function()
            local want = render(reference(text))
            assert.are.equal(want, render(parse(text)))
            for at = 0, #text do
                local got = render(parse_chunks({ text:sub(1, at), text:sub(at + 1) }))
                assert.are.equal(want, got, "split at " .. at)
            end
        end)
    end
end)


-- THE KEY TEST: recorded streams, chunked every which way.
local fixtures = {
    { name = "openai_chat.sse", events = 27 },
    { name = "anthropic_messages.sse", events = 30 },
    { name = "crlf_comments.sse", events = 5 },
    { name = "mixed_endings.sse", events = 8 },
}

for _, fx in ipairs(fixtures) do
    describe("sse fixture " .. fx.name, function()
        local text = read_fixture(fx.name)
        local want

        before_each(function()
            want = want or render(parse(text))
        end)

        it("parses whole to the same events as the reference parser", function()
            local events = parse(text)
            assert.are.equal(fx.events, #events)
            assert.are.equal(render(reference(text)), want)
        end)

        it("gives the same events fed byte by byte", function()
            local chunks = {}
            for i = 1, #text do
                chunks[i] = text:sub(i, i)
            end
            assert.are.equal(want, render(parse_chunks(chunks)))
        end)

        it("gives the same events split at every point into two chunks", function()
            local checked = 0
            for at = 0, #text do
                local got = render(parse_chunks({ text:sub(1, at), text:sub(at + 1) }))
                if got ~= want then
                    assert.are.equal(want, got, "split at byte " .. at)
                end
                checked = checked + 1
            end
            assert.are.equal(#text + 1, checked)
        end)

        it("gives the same events cut at random points into many chunks", function()
            math.randomseed(20240611)
            for round = 1, 300 do
                local max_len = (round % 3 == 0) and 4 or (round % 3 == 1) and 64 or 1024
                local chunks, pos = {}, 1
                while pos <= #text do
                    local len = math.random(1, max_len)
                    chunks[#chunks + 1] = text:sub(pos, pos + len - 1)
                    pos = pos + len
                end
                local got = render(parse_chunks(chunks))
                if got ~= want then
                    local sizes = {}
                    for i, c in ipairs(chunks) do sizes[i] = #c end
                    assert.are.equal(want, got, "round " .. round .. ", chunk sizes " .. table.concat(sizes, ","))
                end
            end
        end)
    end)
end


describe("sse fixtures: content", function()

    it("openai_chat.sse rebuilds the text and the streamed tool call", function()
        local events = parse(read_fixture("openai_chat.sse"))
        assert.are.equal("[DONE]", events[#events].data)
        local text, name, args = {}, nil, {}
        for i = 1, #events - 1 do
            local e = events[i]
            assert.are.equal("message", e.event)
            assert.is_nil(e.id)
            local chunk = cjson.decode(e.data)
            assert.are.equal("chat.completion.chunk", chunk.object)
            local delta = chunk.choices[1] and chunk.choices[1].delta
            if type(delta) == "table" then
                if type(delta.content) == "string" then
                    text[#text + 1] = delta.content
                end
                if type(delta.tool_calls) == "table" then
                    local fn = delta.tool_calls[1]["function"]
                    if type(fn.name) == "string" then name = fn.name end
                    args[#args + 1] = fn.arguments
                end
            end
        end
        assert.are.equal("Let me check the weather in Paris for you.", table.concat(text))
        assert.are.equal("get_weather", name)
        assert.are.same({ location = "Paris, France", unit = "celsius" }, cjson.decode(table.concat(args)))
        assert.are.equal("tool_calls", cjson.decode(events[#events - 2].data).choices[1].finish_reason)
    end)

    it("anthropic_messages.sse gives the event sequence, text and tool input", function()
        local events = parse(read_fixture("anthropic_messages.sse"))
        local kinds, text, json = {}, {}, {}
        for _, e in ipairs(events) do
            local body = cjson.decode(e.data)
            assert.are.equal(e.event, body.type)
            if kinds[#kinds] ~= e.event then
                kinds[#kinds + 1] = e.event
            end
            if e.event == "content_block_delta" then
                if body.delta.type == "text_delta" then
                    text[#text + 1] = body.delta.text
                else
                    assert.are.equal("input_json_delta", body.delta.type)
                    json[#json + 1] = body.delta.partial_json
                end
            end
        end
        assert.are.same({ "message_start", "content_block_start", "ping", "content_block_delta",
                          "content_block_stop", "content_block_start", "content_block_delta",
                          "content_block_stop", "message_delta", "message_stop" }, kinds)
        assert.are.equal("Okay, let's check the weather for San Francisco, CA:", table.concat(text))
        assert.are.same({ location = "San Francisco, CA", unit = "fahrenheit" }, cjson.decode(table.concat(json)))
    end)

    it("crlf_comments.sse gives ids, retry, multi-line data and the bare data line", function()
        local events = parse(read_fixture("crlf_comments.sse"))
        assert.are.same({
            ev("status", '{"state":"queued","position":3}', "1001", 3000),
            ev("log", "step 1: fetch sources\nstep 2: summarise\n\n  indented (two spaces kept after the stripped one)", "1002"),
            ev("progress", '{"pct":50}', "1002"),
            ev("message", "", "1003"),
            ev("done", '{"state":"finished"}', "1003"),
        }, events)
    end)

    it("mixed_endings.sse handles the BOM and every line ending", function()
        local events = parse(read_fixture("mixed_endings.sse"))
        assert.are.same({
            ev("message", "first, after the BOM"),
            ev("cr", "lone CR endings\nsecond line"),
            ev("message", "crlf", "a1"),
            ev("message", "no space\n two spaces", "a1"),
            ev("message", "a bare id line reset the id"),
            ev("message", "the CR and LF above were one blank line"),
            ev("message", "retry carried to here", nil, 250),
            ev("message", "caf\195\169 \226\156\147 \240\159\152\128"),
        }, events)
    end)
end)
