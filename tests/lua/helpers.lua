-- helpers.lua -- shared by the specs (run by `sibyl test`, so every `it`
-- body runs inside a task and may call I/O directly).

local sibyl = require "sibyl"

package.path = "tests/fixtures/?.lua;" .. package.path

local _M = {}

--- Path of the sibyl binary under test.
_M.sibyl_bin = os.getenv("SIBYL_BIN") or "build/sibyl"


local function shell_quote(s)
    return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end
_M.shell_quote = shell_quote


--- Write text to a fresh temporary file; returns its path.
function _M.tmpfile(text, suffix)
    local path = os.tmpname() .. (suffix or "")
    local f = assert(io.open(path, "wb"))
    f:write(text or "")
    f:close()
    return path
end


--- Run the sibyl CLI with a list of arguments (and optional stdin text).
-- Returns { code = exit status, out = stdout, err = stderr }.
function _M.run_cli(args, stdin)
    local parts = { shell_quote(_M.sibyl_bin) }
    for _, a in ipairs(args or {}) do
        parts[#parts + 1] = shell_quote(a)
    end
    local errfile = os.tmpname()
    local infile = _M.tmpfile(stdin or "")
    local cmd = table.concat(parts, " ") .. " <" .. infile .. " 2>" .. errfile
        .. "; echo \"__rc=$?\""
    local p = assert(io.popen(cmd, "r"))
    local out = p:read("*a")
    p:close()
    local f = io.open(errfile, "rb")
    local err = f and f:read("*a") or ""
    if f then f:close() end
    os.remove(errfile)
    os.remove(infile)
    local code = tonumber(out:match("__rc=(%d+)%s*$"))
    out = out:gsub("__rc=%d+%s*$", "")
    return { code = code, out = out, err = err }
end


--- Poll cond() until it is true or `secs` (default 2) pass; returns its last value.
function _M.eventually(cond, secs)
    local t0 = sibyl.now()
    local v = cond()
    while not v and sibyl.now() - t0 < (secs or 2) do
        sibyl.sleep(0.01)
        v = cond()
    end
    return v
end


--- Seconds taken by fn(...), plus its results.
function _M.timed(fn, ...)
    local t0 = sibyl.now()
    local r = { n = 0 }
    local function pack(...) r.n = select("#", ...); for i = 1, r.n do r[i] = (select(i, ...)) end end
    pack(fn(...))
    return sibyl.now() - t0, unpack(r, 1, r.n)
end


return _M
