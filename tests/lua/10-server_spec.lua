-- 10-server_spec.lua -- sibyl.server (runtime/src/http_server.c and
-- stdlib/sibyl/server.lua): routing, request objects, reply shapes, SSE,
-- limits, client disconnects and shutdown. Each server listens on port 0.
-- Runs under `sibyl test`: each `it` is inside a task and may do I/O.
--
-- Most checks go through sibyl.http; a few need the exact bytes on the wire
-- (HEAD, SSE framing, a client vanishing mid-reply, duplicate headers) and use
-- raw() below, a tiny non-blocking TCP client on LuaJIT's FFI (Linux).

local sibyl = require "sibyl"
local http = require "sibyl.http"
local server = require "sibyl.server"
local json = require "sibyl.json"
local helpers = require "helpers"
local ffi = require "ffi"

local HAVE_RAW = ffi.os == "Linux"
if HAVE_RAW then
    pcall(ffi.cdef, [[
        int socket(int domain, int type, int protocol);
        int connect(int fd, const void *addr, unsigned int len);
        long send(int fd, const void *buf, unsigned long n, int flags);
        long recv(int fd, void *buf, unsigned long n, int flags);
        int close(int fd);
    ]])
end
local AF_INET, SOCK_STREAM, MSG_DONTWAIT, MSG_NOSIGNAL = 2, 1, 0x40, 0x4000


-- Send `text` to 127.0.0.1:port and collect the answer until the server
-- closes, `opts.stop(bytes_so_far)` is true, or `opts.timeout` (2 s) passes.
-- The socket is closed on return: with opts.stop, that is a client vanishing.
-- Returns the bytes received and whether the server closed the connection.
local function raw(port, text, opts)
    opts = opts or {}
    local C = ffi.C
    local fd = C.socket(AF_INET, SOCK_STREAM, 0)
    assert(fd >= 0, "socket() failed")
    local sa = ffi.new("uint8_t[16]")                -- struct sockaddr_in
    sa[0] = AF_INET
    sa[2], sa[3] = bit.rshift(port, 8), bit.band(port, 255)
    sa[4], sa[5], sa[6], sa[7] = 127, 0, 0, 1
    if C.connect(fd, sa, 16) ~= 0 then
        C.close(fd)
        error("connect() to port " .. port .. " failed")
    end
    if #text > 0 then
        assert(C.send(fd, text, #text, MSG_NOSIGNAL) == #text, "short send")
    end
    local parts, buf, closed = {}, ffi.new("char[65536]"), false
    local t0 = sibyl.now()
    while sibyl.now() - t0 < (opts.timeout or 2) do
        local n = tonumber(C.recv(fd, buf, 65536, MSG_DONTWAIT))
        if n > 0 then
            parts[#parts + 1] = ffi.string(buf, n)
            if opts.stop and opts.stop(table.concat(parts)) then break end
        elseif n == 0 then
            closed = true
            break
        else
            sibyl.sleep(0.005)                       -- EAGAIN: let the server run
        end
    end
    C.close(fd)
    return table.concat(parts), closed
end


-- Split a raw HTTP/1.x response into status, lower-cased headers, body.
local function parse_raw(bytes)
    local head, body = bytes:match("^(.-)\r\n\r\n(.*)$")
    assert(head, "no end of headers in " .. ("%q"):format(bytes))
    local status = tonumber(head:match("^HTTP/1%.%d (%d%d%d)"))
    local headers = {}
    for k, v in head:gmatch("\r\n([^:\r\n]+):%s*([^\r\n]*)") do
        headers[k:lower()] = v
    end
    return status, headers, body
end


local eventually = helpers.eventually


-- A server for one test: returns it and its base URL; closed by `finally`.
local function serve(opts)
    opts.port = opts.port or 0
    local srv = assert(server.listen(opts))
    finally(function() srv:close() end)
    return srv, "http://127.0.0.1:" .. srv.port
end


describe("sibyl.server", function()

    describe("routing", function()
        local srv, base
        local routes = {
            ["GET /users/me"] = function() return "exact me" end,
            ["GET /users/:id"] = function(req) return "user " .. req.params.id end,
            ["GET /users/:id/posts/:post"] = function(req)
                return { user = req.params.id, post = req.params.post }
            end,
            ["GET /files/*"] = function(req) return "splat [" .. req.params.splat .. "]" end,
            ["GET /files/docs/:name"] = function(req) return "doc " .. req.params.name end,
            ["POST /users/:id"] = function(req) return "post " .. req.params.id end,
            ["/any"] = function(req) return "any " .. req.method end,
            ["GET /dots.json"] = function() return "literal dots" end,
            ["POST /submit"] = function() return "submitted" end,
        }

        setup(function()
            srv = assert(server.listen{ port = 0, routes = routes })
            base = "http://127.0.0.1:" .. srv.port
        end)

        teardown(function() srv:close() end)

        local function fetch(path, method)
            return assert(http.request{ method = method or "GET", url = base .. path })
        end

        -- status, body
        local function get(path, method)
            local res = fetch(path, method)
            return res.status, res.body
        end

        it("captures :params and the * splat", function()
            assert.are.same({ 200, "user 42" }, { get("/users/42") })
            local status, body = get("/users/7/posts/99")
            assert.are.equal(200, status)
            assert.are.same({ user = "7", post = "99" }, json.decode(body))
            assert.are.same({ 200, "splat [a/b/c.txt]" }, { get("/files/a/b/c.txt") })
            assert.are.same({ 200, "splat []" }, { get("/files/") })
            assert.are.same({ 200, "user a b" }, { get("/users/a%20b") })   -- decoded
        end)

        it("exact paths win over patterns; more fixed segments win over fewer", function()
            assert.are.same({ 200, "exact me" }, { get("/users/me") })
            assert.are.same({ 200, "doc x.md" }, { get("/files/docs/x.md") })
            assert.are.same({ 200, "splat [docs/x/y]" }, { get("/files/docs/x/y") })
        end)

        it("dispatches on the method; a route without one takes any method", function()
            assert.are.same({ 200, "post 5" }, { get("/users/5", "POST") })
            assert.are.same({ 200, "any DELETE" }, { get("/any", "DELETE") })
            assert.are.same({ 200, "any PATCH" }, { get("/any", "PATCH") })
            assert.are.same({ 200, "literal dots" }, { get("/dots.json") })
            assert.are.equal(404, (get("/dotsxjson")))                      -- "." is not a pattern
        end)

        it("answers 404 for an unknown path and 405 for a known path with another method, as JSON", function()
            local res = fetch("/nope")
            local status, body = res.status, res.body
            assert.are.equal(404, status)
            assert.are.equal("application/json", res.headers["content-type"])
            assert.are.same({ error = { status = 404, message = "not found: GET /nope" } }, json.decode(body))

            res = fetch("/users/5", "DELETE")
            status, body = res.status, res.body
            assert.are.equal(405, status)
            assert.are.equal("application/json", res.headers["content-type"])
            assert.are.same({ error = { status = 405, message = "method not allowed: DELETE /users/5" } },
                json.decode(body))
        end)

        it("serves HEAD from GET routes", function()
            local res = fetch("/users/42", "HEAD")
            assert.are.equal(200, res.status)
            assert.are.equal("", res.body)
            assert.are.equal("text/plain; charset=utf-8", res.headers["content-type"])
            assert.are.equal(405, (get("/submit", "HEAD")))            -- POST only
            assert.are.equal(404, (get("/nope", "HEAD")))
        end)

        it("sends no body in a reply to HEAD", function()
            if not HAVE_RAW then pending("needs LuaJIT FFI sockets (Linux)") return end
            local bytes, closed = raw(srv.port, "HEAD /users/42 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            assert.is_true(closed)
            local status, _, body = parse_raw(bytes)
            assert.are.equal(200, status)
            assert.are.equal("", body)          -- BUG: the GET body ("user 42") is sent after the headers
        end)

        it("keeps a + in the path (only the query decodes + as a space)", function()
            -- BUG: the path goes through the query-string unescape, so "+" becomes " "
            assert.are.same({ 200, "user a+b" }, { get("/users/a+b") })
        end)
    end)


    describe("requests", function()

        it("decode the query: repeated keys make a list, + and %20 are spaces", function()
            local seen
            local _, base = serve{ routes = { ["GET /q"] = function(req) seen = req; return "ok" end } }
            assert(http.get(base .. "/q?a=1&a=2&a=3&b=x+y&c=%20z%2Fw&flag&e=&k%20ey=v"))
            assert.are.same({ a = { "1", "2", "3" }, b = "x y", c = " z/w", flag = "", e = "", ["k ey"] = "v" },
                seen.query)
            assert.are.equal("a=1&a=2&a=3&b=x+y&c=%20z%2Fw&flag&e=&k%20ey=v", seen.query_string)
            assert.are.equal("/q", seen.path)
            assert.are.equal("/q?a=1&a=2&a=3&b=x+y&c=%20z%2Fw&flag&e=&k%20ey=v", seen.uri)
            assert.are.equal("GET", seen.method)

            assert(http.get(base .. "/q"))
            assert.are.same({}, seen.query)
            assert.is_nil(seen.query_string)
        end)

        it("have case-insensitive headers", function()
            local seen
            local _, base = serve{ routes = { ["GET /h"] = function(req) seen = req.headers; return "ok" end } }
            assert(http.get(base .. "/h", { headers = { ["X-Api-Key"] = "k1" } }))
            assert.are.equal("k1", seen["x-api-key"])
            assert.are.equal("k1", seen["X-Api-Key"])
            assert.are.equal("k1", seen["X-API-KEY"])
            assert.matches("^127%.0%.0%.1:%d+$", seen.host)
        end)

        it("join repeated headers with a comma", function()
            if not HAVE_RAW then pending("needs LuaJIT FFI sockets (Linux)") return end
            local srv = serve{ routes = { ["GET /dup"] = function(req) return req.headers["X-Dup"] end } }
            local bytes = raw(srv.port, "GET /dup HTTP/1.1\r\nHost: t\r\nX-Dup: a\r\nx-dup: b\r\nConnection: close\r\n\r\n")
            local status, _, body = parse_raw(bytes)
            assert.are.equal(200, status)
            assert.are.equal("a, b", body)
        end)

        it("decode a JSON body with req:json(), or give kind parse", function()
            local _, base = serve{ routes = { ["POST /j"] = function(req)
                local v, err = req:json()
                return { value = v or json.null, kind = err and err.kind or json.null, raw = req.body }
            end } }
            local out = assert(http.post(base .. "/j", { a = { 1, 2 } })):json()
            assert.are.same({ a = { 1, 2 } }, out.value)
            assert.are.equal(json.null, out.kind)
            out = assert(http.post(base .. "/j", "{broken")):json()
            assert.are.equal(json.null, out.value)
            assert.are.equal("parse", out.kind)
            assert.are.equal("{broken", out.raw)
        end)
    end)


    describe("replies", function()
        local srv, base
        local routes = {
            ["GET /table"] = function() return { ok = true, n = 1 } end,
            ["GET /string"] = function() return "plain text" end,
            ["GET /response"] = function()
                return { status = 201, headers = { ["X-Thing"] = "made", ["Content-Type"] = "text/csv" },
                         body = "a,b\n" }
            end,
            ["GET /response-json"] = function() return { status = 202, body = { queued = true } } end,
            ["GET /status-only"] = function() return { status = 404 } end,
            ["GET /nil"] = function() end,
            ["GET /number"] = function() return 42 end,
            ["GET /boom"] = function() error("kaboom") end,
        }
        local errors = {}

        setup(function()
            srv = assert(server.listen{ port = 0, routes = routes,
                on_error = function(req, err) errors[#errors + 1] = { path = req.path, err = err } end })
            base = "http://127.0.0.1:" .. srv.port
        end)

        teardown(function() srv:close() end)

        it("a table is JSON with status 200", function()
            local res = assert(http.get(base .. "/table"))
            assert.are.equal(200, res.status)
            assert.are.equal("application/json", res.headers["content-type"])
            assert.are.same({ ok = true, n = 1 }, res:json())
        end)

        it("a string is text/plain with status 200", function()
            local res = assert(http.get(base .. "/string"))
            assert.are.equal(200, res.status)
            assert.are.equal("text/plain; charset=utf-8", res.headers["content-type"])
            assert.are.equal("plain text", res.body)
        end)

        it("{status, headers, body} is sent as given; a table body is JSON", function()
            local res = assert(http.get(base .. "/response"))
            assert.are.equal(201, res.status)
            assert.are.equal("made", res.headers["x-thing"])
            assert.are.equal("text/csv", res.headers["content-type"])
            assert.are.equal("a,b\n", res.body)

            res = assert(http.get(base .. "/response-json"))
            assert.are.equal(202, res.status)
            assert.are.equal("application/json", res.headers["content-type"])
            assert.are.same({ queued = true }, res:json())

            res = assert(http.get(base .. "/status-only"))
            assert.are.equal(404, res.status)
            assert.are.equal("", res.body)
        end)

        it("nil is 204 No Content", function()
            local res = assert(http.get(base .. "/nil"))
            assert.are.equal(204, res.status)
            assert.are.equal("", res.body)
        end)

        it("a handler error is a 500 with a JSON body, reported to on_error; the server keeps serving", function()
            local before = #errors
            local res = assert(http.get(base .. "/boom"))
            assert.are.equal(500, res.status)
            assert.are.equal("application/json", res.headers["content-type"])
            local body = res:json()
            assert.are.equal(500, body.error.status)
            assert.matches("internal error", body.error.message)
            assert.is_nil(body.error.message:find("kaboom", 1, true))   -- no internals leak out
            assert.are.equal(before + 1, #errors)
            assert.are.equal("/boom", errors[#errors].path)
            assert.matches("kaboom", errors[#errors].err)
            assert.matches("stack traceback", errors[#errors].err)

            res = assert(http.get(base .. "/number"))                   -- a bad return value too
            assert.are.equal(500, res.status)
            assert.matches("handler returned a number", errors[#errors].err)

            for _ = 1, 3 do
                assert.are.equal(200, assert(http.get(base .. "/string")).status)
            end
        end)

        it("a reply with a non-numeric status is a 500, not a request left hanging", function()
            -- BUG: shape() passes status = "ok" through; core.reply raises outside
            -- the handler's xpcall, the task dies and the client never gets a reply.
            local errs = {}
            local _, b = serve{ on_error = function(_, e) errs[#errs + 1] = e end, routes = {
                ["GET /healthz"] = function() return { status = "ok" } end,
            } }
            local res, err = http.get(b .. "/healthz", { timeout = 2 })
            assert.is_nil(err)
            assert.are.equal(500, res.status)
            assert.are.equal(1, #errs)
        end)

        it("opts.handler takes every request", function()
            local _, b = serve{ handler = function(req) return req.method .. " " .. req.path end }
            assert.are.equal("PUT /any/thing", assert(http.request{ method = "PUT", url = b .. "/any/thing" }).body)
        end)
    end)


    describe("concurrency", function()

        it("a handler that sleeps does not block the others", function()
            local _, base = serve{ routes = {
                ["GET /slow"] = function() sibyl.sleep(0.3); return "slow" end,
                ["GET /fast"] = function() return "fast" end,
            } }
            local t0 = sibyl.now()
            local a = sibyl.spawn(http.get, base .. "/slow")
            local b = sibyl.spawn(http.get, base .. "/slow")
            sibyl.sleep(0.05)
            local fast = assert(http.get(base .. "/fast"))
            local fast_at = sibyl.now() - t0
            assert.are.equal("fast", fast.body)
            assert.are.equal("slow", assert(a:wait()).body)
            assert.are.equal("slow", assert(b:wait()).body)
            local took = sibyl.now() - t0
            assert.is_true(fast_at < 0.2, "fast answered at " .. fast_at)
            assert.is_true(took >= 0.29 and took < 0.5, "two slow requests took " .. took)   -- ~1x, not 2x
        end)
    end)


    describe("SSE", function()

        it("frames event, id, retry and multi-line data", function()
            local _, base = serve{ routes = { ["GET /sse"] = function(req, res)
                assert(res:sse{ event = "greeting", id = 7, data = "line one\nline two" })
                assert(res:sse("just data"))
                assert(res:sse{ data = { n = 1 }, retry = 1500 })
            end } }
            local res = assert(http.get(base .. "/sse"))
            assert.are.equal(200, res.status)
            assert.are.equal("text/event-stream", res.headers["content-type"])
            assert.are.equal("no-cache", res.headers["cache-control"])
            assert.are.equal(
                "event: greeting\nid: 7\ndata: line one\ndata: line two\n\n" ..
                "data: just data\n\n" ..
                'retry: 1500\ndata: {"n":1}\n\n', res.body)
            -- and sibyl.http reads it back
            local stream = assert(http.sse{ url = base .. "/sse" })
            local e1, e2, e3 = stream:next(), stream:next(), stream:next()
            assert.are.same({ event = "greeting", id = "7", data = "line one\nline two" }, e1)
            assert.are.same({ event = "message", id = "7", data = "just data" }, e2)
            assert.are.equal(1500, e3.retry)
            assert.is_nil(stream:next())
        end)

        it("a client that disconnects mid-stream cancels the handler's task", function()
            if not HAVE_RAW then pending("needs LuaJIT FFI sockets (Linux)") return end
            local st = { n = 0 }
            local srv = serve{ routes = { ["GET /ticks"] = function(req, res)
                while res:sse{ data = "tick " .. st.n } do
                    st.n = st.n + 1
                    sibyl.sleep(0.01)
                end
                st.after_loop = true                   -- must not run: the task is cancelled
            end } }
            local bytes = raw(srv.port, "GET /ticks HTTP/1.1\r\nHost: t\r\n\r\n",
                { stop = function(b) return b:find("tick 2", 1, true) end })
            assert.matches("data: tick 0", bytes)
            assert.is_truthy(eventually(function() return srv:inflight() == 0 end))
            local n = st.n
            sibyl.sleep(0.1)
            assert.are.equal(n, st.n)                  -- no more writes
            assert.is_nil(st.after_loop)
        end)

        it("a client task cancelled mid-stream cancels the handler's task too", function()
            local st = { n = 0 }
            local srv, base = serve{ routes = { ["GET /ticks"] = function(req, res)
                while res:sse{ data = "tick" } do
                    st.n = st.n + 1
                    sibyl.sleep(0.01)
                end
                st.after_loop = true
            end } }
            local got = 0
            local t = sibyl.spawn(function()
                local stream = assert(http.sse{ url = base .. "/ticks" })
                for _ in stream:events() do got = got + 1 end
            end)
            assert.is_truthy(eventually(function() return got >= 3 end))
            assert.are.equal(1, srv:inflight())
            t:cancel()
            assert.is_truthy(eventually(function() return srv:inflight() == 0 end))
            assert.is_nil(st.after_loop)
        end)

        it("an error in an SSE handler sends a last error event and is reported", function()
            local errs = {}
            local _, base = serve{ on_error = function(_, e) errs[#errs + 1] = e end, routes = {
                ["GET /sse"] = function(req, res)
                    res:sse("one")
                    error("mid-stream failure")
                end,
            } }
            local stream = assert(http.sse{ url = base .. "/sse" })
            assert.are.equal("one", stream:next().data)
            local last = stream:next()
            assert.are.equal("error", last.event)
            assert.are.equal(500, json.decode(last.data).error.status)
            assert.is_nil(stream:next())
            assert.are.equal(1, #errs)
            assert.matches("mid%-stream failure", errs[1])
        end)

        it("an error in a plain streamed reply cuts the transfer short", function()
            local _, base = serve{ on_error = function() end, routes = {
                ["GET /chunks"] = function(req, res)
                    res:write("partial")
                    sibyl.sleep(0.02)
                    error("mid-stream failure")
                end,
            } }
            local res, err = http.get(base .. "/chunks")
            assert.is_nil(res)
            assert.are.equal("connect", err.kind)
        end)

        it("res:abort() drops the connection mid-reply", function()
            local _, base = serve{ routes = { ["GET /cut"] = function(req, res)
                res:write("partial")
                sibyl.sleep(0.02)
                res:abort()
            end } }
            local res, err = http.get(base .. "/cut")
            assert.is_nil(res)
            assert.are.equal("connect", err.kind)
        end)
    end)


    describe("limits", function()

        it("a streamed reply may pause longer than the idle timeout, up to stream_timeout", function()
            local function stream(opts)
                opts.routes = { ["GET /s"] = function(req, res)
                    res:sse("one"); sibyl.sleep(1.3); res:sse("two")
                end }
                opts.port = 0
                local srv = assert(server.listen(opts))   -- closed here: finally keeps one callback
                local s = assert(http.sse{ url = "http://127.0.0.1:" .. srv.port .. "/s" })
                local got = {}
                for ev in s:events() do got[#got + 1] = ev.data end
                srv:close()
                return table.concat(got, ","), s.error
            end
            local got, err = stream{ timeout = 1 }
            assert.are.equal("one,two", got)
            assert.is_nil(err)
            got, err = stream{ timeout = 1, stream_timeout = 1 }
            assert.are.equal("one", got)
            assert.are.equal("connect", err.kind)
        end)

        it("a 10 MB body against max_body = 1 MiB is 413, and the server keeps serving", function()
            local _, base = serve{ max_body = 1024 * 1024, routes = {
                ["POST /upload"] = function(req) return tostring(#req.body) end,
            } }
            local res = assert(http.post(base .. "/upload", string.rep("x", 10 * 1024 * 1024)))
            assert.are.equal(413, res.status)
            res = assert(http.post(base .. "/upload", string.rep("y", 1000 * 1000)))
            assert.are.equal(200, res.status)
            assert.are.equal("1000000", res.body)
        end)

        it("headers over max_header are refused with 400", function()
            local _, base = serve{ max_header = 4096, routes = { ["GET /"] = function() return "ok" end } }
            local res = assert(http.get(base .. "/", { headers = { ["X-Big"] = string.rep("h", 8000) } }))
            assert.are.equal(400, res.status)
            assert.are.equal(200, assert(http.get(base .. "/")).status)
        end)

        it("max_inflight answers 503 with Retry-After", function()
            local release = false
            local srv, base = serve{ max_inflight = 2, routes = {
                ["GET /hold"] = function()
                    while not release do sibyl.sleep(0.01) end
                    return "held"
                end,
                ["GET /quick"] = function() return "quick" end,
            } }
            local a = sibyl.spawn(http.get, base .. "/hold")
            local b = sibyl.spawn(http.get, base .. "/hold")
            assert.is_truthy(eventually(function() return srv:inflight() == 2 end))
            local res = assert(http.get(base .. "/quick"))
            assert.are.equal(503, res.status)
            release = true
            assert.are.equal("held", assert(a:wait()).body)
            assert.are.equal("held", assert(b:wait()).body)
            assert.are.equal(0, srv:inflight())
            assert.are.equal("quick", assert(http.get(base .. "/quick")).body)
            -- BUG: evhttp_send_error() clears the output headers, Retry-After is lost
            assert.are.equal("1", res.headers["retry-after"])
        end)

        it("timeout closes an idle connection", function()
            if not HAVE_RAW then pending("needs LuaJIT FFI sockets (Linux)") return end
            local srv = serve{ timeout = 1, routes = { ["GET /"] = function() return "ok" end } }
            local t0 = sibyl.now()
            local bytes, closed = raw(srv.port, "GET / HTTP/1.1\r\n", { timeout = 4 })   -- never finished
            local took = sibyl.now() - t0
            assert.is_true(closed)
            assert.are.equal("", bytes)
            assert.is_true(took >= 0.9 and took < 3, "closed after " .. took)
        end)
    end)


    describe("lifecycle", function()

        it("listen on a port in use is nil, err of kind io naming the port", function()
            local first = serve{ routes = {} }
            local srv, err = server.listen{ port = first.port, routes = {} }
            assert.is_nil(srv)
            assert.are.equal("io", err.kind)
            assert.matches(":" .. first.port, err.message)
            assert.matches("in use", err.message)
        end)

        it("srv:close() makes requests fail with kind connect; close is idempotent", function()
            local srv = assert(server.listen{ port = 0, routes = { ["GET /"] = function() return "ok" end } })
            local base = "http://127.0.0.1:" .. srv.port
            assert.are.equal("sibyl.server (port " .. srv.port .. ")", tostring(srv))
            assert.are.equal("ok", assert(http.get(base .. "/")).body)
            srv:close()
            srv:close()
            assert.are.equal("sibyl.server (closed)", tostring(srv))
            local res, err = http.get(base .. "/")
            assert.is_nil(res)
            assert.are.equal("connect", err.kind)
        end)

        it("srv:shutdown() stops accepting while requests in flight finish", function()
            local srv, base = serve{ routes = { ["GET /slow"] = function() sibyl.sleep(0.2); return "done" end } }
            local t = sibyl.spawn(http.get, base .. "/slow")
            assert.is_truthy(eventually(function() return srv:inflight() == 1 end))
            srv:shutdown()
            local res, err = http.get(base .. "/slow")
            assert.is_nil(res)
            assert.are.equal("connect", err.kind)
            assert.are.equal("done", assert(t:wait()).body)
            assert.are.equal(0, srv:inflight())
        end)

        it("serve_until_signal drains requests in flight on SIGTERM, then closes", function()
            if not HAVE_RAW then pending("sends itself a signal through the FFI (Linux)") return end
            local script = helpers.tmpfile([[
                local sibyl = require "sibyl"
                local http = require "sibyl.http"
                local server = require "sibyl.server"
                local ffi = require "ffi"
                ffi.cdef "int getpid(void); int kill(int pid, int sig);"
                local srv = assert(server.listen{ port = 0, routes = {
                    ["GET /slow"] = function() sibyl.sleep(0.3); return "finished" end,
                } })
                local base = "http://127.0.0.1:" .. srv.port
                local inflight = sibyl.spawn(http.get, base .. "/slow")
                sibyl.spawn(function() sibyl.sleep(0.1); ffi.C.kill(ffi.C.getpid(), 15) end)
                server.serve_until_signal(srv, 5)
                local res = inflight:wait()
                print("in flight", res.status, res.body)
                print("after", select(2, http.get(base .. "/slow")).kind)
            ]], ".lua")
            local r = helpers.run_cli({ script })
            os.remove(script)
            assert.are.equal(0, r.code, r.err)
            assert.are.equal("in flight\t200\tfinished\nafter\tconnect\n", r.out)
            assert.matches("TERM received, shutting down", r.err)
        end)

        it("misuse raises", function()
            assert.has_error(function() server.listen() end, "server.listen: options table expected")
            assert.has_error(function() server.listen{ port = 0 } end,
                "server.listen: opts.routes or opts.handler is required")
            assert.has_error(function() server.listen{ port = 0, routes = { ["GET /x"] = "nope" } } end,
                "server: route 'GET /x' needs a function handler")
            assert.has_error(function() server.listen{ port = 0, routes = { ["GET x"] = function() end } } end)
        end)
    end)
end)
