-- sibyl.repl -- the Lua half of the REPL (runtime/cli/repl.c is the C half).
--
-- compile(src) decides whether the input is a complete chunk (trying it as
-- an expression first, so `x + 1` prints 2); eval(fn) runs inside the line's
-- task and prints results or the error with its traceback.

local pretty = require "sibyl.pretty"

local loadstring, select, xpcall, tostring, print = loadstring, select, xpcall, tostring, print
local traceback = debug.traceback
local concat = table.concat

local _M = { _VERSION = "0.1.0" }


--- Compile a chunk typed at the prompt.
-- Returns fn; or false when the chunk is incomplete (more lines needed);
-- or nil, message on a syntax error.
function _M.compile(src)
    -- As an expression first, so `x + 1` prints 2. Wrapped in select() so
    -- a failing call is not a tail call and its error keeps "stdin:1:".
    local fn = loadstring("return select(1, " .. src .. "\n)", "=stdin")
    if fn then
        return fn
    end
    local err
    fn, err = loadstring(src, "=stdin")
    if fn then
        return fn
    end
    if err:find("<eof>", 1, true) and err:find("near", 1, true) then
        return false
    end
    return nil, err
end


-- The traceback of an error in a typed chunk, without the REPL's own frames.
local function handler(e)
    if type(e) == "table" then
        return tostring(e)
    end
    if e == "interrupted" or (type(e) == "string" and e:find(": interrupted$")) then
        return "interrupted"   -- Ctrl-C: the traceback would only show the REPL
    end
    local tb = traceback(tostring(e), 2)
    local cut = tb:find("\n%s*%[C%]: in function 'xpcall'")
    return cut and tb:sub(1, cut - 1) or tb
end


local function show(ok, ...)
    if not ok then
        print((...))
        return
    end
    local n = select("#", ...)
    if n == 0 then
        return
    end
    local out = {}
    for i = 1, n do
        out[i] = pretty.format((select(i, ...)))
    end
    print(concat(out, "\t"))
end


--- Run a compiled chunk and print what it returns.
function _M.eval(fn)
    show(xpcall(fn, handler))
end


return _M
