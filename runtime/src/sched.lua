-- sched.lua -- the Lua half of the `sibyl` module (sched.c is the C half).
--
-- Receives the module table and adds:
--   sibyl.deadline(secs, fn, ...)   a deadline scope around fn
--   coroutine.resume / coroutine.wrap wrappers, so I/O works inside user
--   coroutines (iterators, generators) that run inside a task.
--
-- How the wrappers work: an I/O primitive parks its task by yielding a
-- private marker. When a user coroutine yields that marker, the wrapper
-- yields it further up (to the task's own coroutine and so to the
-- scheduler), then hands the values the task is resumed with back down.
-- Ordinary yields pass through unchanged.

local sibyl = ...

local co_create, co_resume, co_yield, co_status =
    coroutine.create, coroutine.resume, coroutine.yield, coroutine.status
local error, pcall, select, type = error, pcall, select, type

local marker = sibyl._marker
local set_deadline = sibyl._set_deadline
local set_context = sibyl._set_context
sibyl._marker = nil
sibyl._set_deadline = nil
sibyl._set_context = nil


local forward


-- Pass I/O parks up to the scheduler until the coroutine yields for real.
forward = function(co, ok, ...)
    if ok and (...) == marker and select("#", ...) == 1 and co_status(co) == "suspended" then
        return forward(co, co_resume(co, co_yield(marker)))
    end
    return ok, ...
end


function coroutine.resume(co, ...)
    return forward(co, co_resume(co, ...))
end


local function unwrap(ok, ...)
    if not ok then
        error((...), 0)
    end
    return ...
end


function coroutine.wrap(fn)
    local co = co_create(fn)
    return function(...)
        return unwrap(forward(co, co_resume(co, ...)))
    end
end


local function close_scope(prev, ok, ...)
    set_deadline(prev, true)
    if not ok then
        error((...), 0)
    end
    return ...
end


--- Run fn(...) with a deadline `secs` seconds from now: every I/O inside fn
-- (and in tasks it spawns) fails with kind "timeout" once it expires.
-- Nested deadlines keep the earliest. Returns fn's results; errors pass through.
function sibyl.deadline(secs, fn, ...)
    if type(secs) ~= "number" or secs < 0 or secs ~= secs then
        error("bad argument #1 to 'deadline' (number of seconds >= 0 expected)", 2)
    end
    if type(fn) ~= "function" then
        error("bad argument #2 to 'deadline' (function expected)", 2)
    end
    local prev = set_deadline(secs)
    return close_scope(prev, pcall(fn, ...))
end


local function close_context(prev, ok, ...)
    set_context(prev)
    if not ok then
        error((...), 0)
    end
    return ...
end


--- Run fn(...) with `value` as the task's context: sibyl.context() returns
-- it inside fn and in every task spawned from there (they inherit it).
-- Libraries use it for per-task-tree state (sibyl.llm's usage meters).
-- Returns fn's results; errors pass through; the previous value comes back.
function sibyl.with_context(value, fn, ...)
    if type(fn) ~= "function" then
        error("bad argument #2 to 'with_context' (function expected)", 2)
    end
    local prev = set_context(value)
    return close_context(prev, pcall(fn, ...))
end
