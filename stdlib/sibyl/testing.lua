-- sibyl.testing -- `sibyl test`: run busted specs inside the Sibyl runtime.
--
--   sibyl test tests/lua                     -- every *_spec.lua below
--   sibyl test tests/lua/01-sched_spec.lua -o TAP
--
-- The whole run is one task, so every `it` block may call I/O directly
-- (sibyl.sleep, http requests...): it simply parks that task while the loop
-- serves everything else. Options are busted's own (`sibyl test --help`).

local _M = { _VERSION = "0.1.0" }


--- Entry point used by the CLI; `arg` holds busted's arguments.
function _M.main()
    local ok, runner = pcall(require, "busted.runner")
    if not ok then
        error("sibyl test needs busted (Debian package lua-busted): " .. tostring(runner), 0)
    end
    -- On failures busted ends with a bare error() (its Lua 5.1 way to exit
    -- non-zero). Raise a short message instead of os.exit: the CLI then
    -- closes the runtime (every __gc runs, nothing shows as a leak under
    -- ASan) and exits 1.
    local ran, err = pcall(runner, { standalone = false })
    if not ran then
        if err == nil then
            error("sibyl test: some specs failed (see above)", 0)
        end
        error(err, 0)
    end
end


return _M
