-- sibyl.mcp.stdio -- the client side of MCP's stdio transport: spawn the
-- server, write one JSON-RPC message per line to its stdin, read its
-- stdout line by line in a reader task, keep the tail of its stderr.
-- Closing stops the process (stdin closed, TERM, KILL) and reaps it.
-- Used by sibyl.mcp.client; docs: doc/mcp.md.

local sibyl = require "sibyl"
local json = require "sibyl.json"
local process = require "sibyl.process"

local type, ipairs, tostring, setmetatable, error = type, ipairs, tostring, setmetatable, error
local format = string.format

local _M = {}

_M.defaults = {
    grace = 2,                      -- seconds between closing stdin, TERM and KILL
    max_message = 16 * 1024 * 1024, -- longest line (message) accepted from the server
}

local transport = { kind = "stdio" }
local transport_mt = { __index = transport }


function transport:send(msg)
    if self.dead then return nil, self.dead end
    local ok, err = self.proc:write(json.encode(msg) .. "\n")
    if not ok then
        return nil, sibyl.error("closed", "mcp: cannot write to the server: " .. tostring(err and err.message or err)
            .. self:_tail(), { stderr = self:stderr() })
    end
    return true
end


function transport:stderr()
    return self.proc:stderr()
end


function transport:_tail()
    local s = self.proc:stderr()
    if s == "" then return "" end
    return "\nserver stderr: " .. s:sub(-2000)
end


-- The reader task: every line is a message; responses go to on_response,
-- the rest to on_message. EOF or a read error ends it and fails the calls.
function transport:_read_loop(on_message, on_response, on_lost, on_oversize)
    local proc = self.proc
    while true do
        local line, err = proc:read_line()
        if not line and err and err.kind == "limit" then
            -- Skipped (the stream reads on). Whose answer it was is unknown: fail
            -- the calls in flight rather than leave one waiting for nothing.
            on_oversize(sibyl.error("limit", format("mcp: a message from the server was over %d bytes "
                .. "and was dropped (raise opts.max_message)", self.max_message)))
            line = ""
        elseif not line then
            break
        end
        if line ~= "" then
            local msg, perr = json.decode(line)
            if type(msg) ~= "table" then
                io.stderr:write("mcp: the server wrote a line that is not JSON-RPC (ignored): ",
                                line:sub(1, 200), perr and (" (" .. tostring(perr.message) .. ")") or "", "\n")
            elseif msg.method == nil and msg.id ~= nil then
                on_response(msg)
            else
                on_message(msg)
            end
        end
    end
    -- The server closed stdout (usually: it exited). Give it a moment to be
    -- reaped so the error can say how it ended.
    local st = sibyl.deadline(0.2, proc.wait, proc)
    local how = ""
    if type(st) == "table" then
        how = st.signal and format(" (killed by signal %s)", tostring(st.signal)) or format(" (exit code %s)", tostring(st.code))
    end
    self.dead = sibyl.error("closed", format("mcp: the server %s closed its output%s", self.name, how) .. self:_tail(),
                            { stderr = proc:stderr(), exit = st })
    on_lost(self.dead)
end


function transport:close()
    if self.closed then return end
    self.closed = true
    self.dead = self.dead or sibyl.error("closed", "mcp: the transport is closed")
    if self.reader and sibyl.current() ~= self.reader then self.reader:cancel() end
    self.proc:close{ grace = self.grace }
end


--- Spawn the server: a transport or nil, err. opts.command is {cmd, args...}
-- (or a string run through /bin/sh -c); env, cwd, grace, max_message.
function _M.open(opts, on_message, on_response, on_lost, on_oversize)
    local argv = opts.command
    if type(argv) == "string" then
        argv = { "/bin/sh", "-c", argv }
    elseif type(argv) ~= "table" or type(argv[1]) ~= "string" then
        error("mcp.connect: opts.command must be a list {cmd, args...} or a shell command string", 3)
    end
    local spec = {}
    for i, a in ipairs(argv) do spec[i] = tostring(a) end
    spec.env, spec.cwd = opts.env, opts.cwd
    spec.stderr = opts.stderr or "pipe"
    spec.max_line = opts.max_message or _M.defaults.max_message
    local proc, err = process.spawn(spec)
    if not proc then return nil, err end
    local t = setmetatable({
        proc = proc, name = format("%q", spec[1]), grace = opts.grace or _M.defaults.grace,
        max_message = spec.max_line,
    }, transport_mt)
    t.reader = sibyl.spawn(transport._read_loop, t, on_message, on_response, on_lost, on_oversize)
    return t
end

return _M
